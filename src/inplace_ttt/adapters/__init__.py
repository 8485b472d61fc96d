"""The old name of `inplace_ttt.families`, kept for one release: ``inplace_ttt.adapters``,
``inplace_ttt.adapters.hf`` and ``inplace_ttt.adapters.moshi`` (and their old submodules) still
import, with a FutureWarning naming the new home."""

import importlib
import sys
import warnings

from .. import families

# old module name -> new one
MOVED = {
    "hf": "families.hf",
    "hf_cache": "families.hf.cache",
    "release": "families.hf.release",
    "moshi": "families.moshi",
    "moshi_rope": "families.moshi.rope",
    "protocol": "families.protocol",
    "probe": "families.probe",
    "record": "families.record",
}


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``inplace_ttt.adapters.X`` as the module it moved to."""

    def find_spec(self, fullname, path, target=None):
        prefix = __name__ + "."
        if fullname.startswith(prefix) and fullname[len(prefix) :] in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"inplace_ttt.{MOVED[spec.name.rsplit('.', 1)[1]]}"
        warnings.warn(f"{spec.name} is now {new}", FutureWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _OldNames())
warnings.warn("inplace_ttt.adapters is now inplace_ttt.families", FutureWarning, stacklevel=2)


# the old package's own names that live elsewhere now
RENAMED = {
    "adapter_of": ("families", "family_of"),
    "MOSHI_TTT_WEIGHTS": ("families.moshi.io", "TTT_WEIGHTS"),
    "from_pretrained": ("families.hf", "from_pretrained"),
    "export_release": ("families.hf", "export_release"),
    "decoder_layers": ("families.hf", "decoder_layers"),
    "is_converted": ("families.hf", "is_converted"),
    "ttt_positions": ("families.hf", "ttt_positions"),
}


def __getattr__(name: str):
    if name in RENAMED:
        module, new = RENAMED[name]
        return getattr(importlib.import_module(f"inplace_ttt.{module}"), new)
    return getattr(families, name)
