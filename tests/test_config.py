import math

import pytest

from inplace_ttt import TTTConfig


def test_defaults_are_the_released_recipe_shape():
    c = TTTConfig()
    assert c.layer_indices(36) == tuple(range(0, 36, 6))
    assert c.target_source == "hidden_states" and c.conv_kernel == 5 and c.clip_tau is None


@pytest.mark.parametrize(
    "rule, n, expected",
    [("all", 3, (0, 1, 2)), ("every 6", 13, (0, 6, 12)), ("every 6th layer from 0", 7, (0, 6)), ("every 4 from 2", 11, (2, 6, 10))],
)
def test_layer_rules(rule, n, expected):
    assert TTTConfig(layers=rule).layer_indices(n) == expected


def test_explicit_layers_sorted_and_range_checked():
    c = TTTConfig(layers=[5, 1])
    assert c.layers == (1, 5)
    assert c.layer_indices(6) == (1, 5)
    with pytest.raises(ValueError, match=r"indices \[5\] outside the model's 4 layers"):
        c.layer_indices(4)
    with pytest.raises(ValueError, match="starts at layer 9"):
        TTTConfig(layers="every 2 from 9").layer_indices(4)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("chunk_size", 0, r"chunk_size must be an integer in \[1, 1048576\]"),
        ("chunk_size", 2.5, r"chunk_size must be an integer in \[1, 1048576\]"),
        (
            "chunk_size",
            2**62,
            r"chunk_size must be an integer in \[1, 1048576\] \(a longer chunk is longer than any row and never updates\); got 4611686018427387904",
        ),
        ("ttt_lr", math.nan, r"ttt_lr must be a number in \(0, 1000\]"),
        ("ttt_lr", math.inf, r"ttt_lr must be a number in \(0, 1000\]"),
        ("ttt_lr", 0.0, r"ttt_lr must be a number in \(0, 1000\]"),
        ("ttt_lr", 1e38, r"ttt_lr must be a number in \(0, 1000\] \(the paper's is 3; far larger ones overflow"),
        ("ttt_lr", 1000.5, r"ttt_lr must be a number in \(0, 1000\]"),
        ("conv_kernel", 4, r"conv_kernel must be an odd integer in \[1, 1023\]"),
        ("conv_kernel", 1000000001, r"conv_kernel must be an odd integer in \[1, 1023\] \(centred; its weights are hidden size x kernel\); got 1000000001"),
        ("target_source", "embeddings", r"target_source must be one of \('hidden_states', 'token_embeddings'\)"),
        ("clip_tau", 0.0, "clip_tau must be None or a finite number > 0"),
        ("clip_tau", -1e-5, "clip_tau must be None or a finite number > 0"),
        ("layers", [], "layers must be distinct non-negative"),
        ("layers", [1, 1], "layers must be distinct non-negative"),
        ("layers", [-1], "layers must be distinct non-negative"),
        ("layers", "every other", "rule 'every other' not understood"),
        ("layers", "every 0", "not understood"),
        ("target_init", "zeros", r"target_init must be one of \('identity', 'diagonal'\)"),
        ("target_init_std", 0.0, "target_init_std must be a finite number > 0"),
        ("target_conv", "no", "target_conv must be true or false"),
        ("target_projection", 0, "target_projection must be true or false"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TTTConfig(**{field: value})


def test_the_target_needs_the_convolution_or_the_projection():
    with pytest.raises(ValueError, match="target_conv and target_projection cannot both be false"):
        TTTConfig(target_conv=False, target_projection=False)
    assert TTTConfig(target_conv=False).target_projection and TTTConfig(target_projection=False).target_conv


def test_dict_round_trip_and_unknown_keys():
    c = TTTConfig(layers=[0, 3], chunk_size=64, ttt_lr=1.5, target_source="token_embeddings", clip_tau=1e-5, target_init="diagonal", target_projection=False)
    assert TTTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"unknown TTTConfig fields \['chunk'\]"):
        TTTConfig.from_dict({"chunk": 3})
    assert c.replace(clip_tau=None).clip_tau is None
    with pytest.raises(ValueError, match="chunk_size"):
        c.replace(chunk_size=-1)


def test_target_is_the_old_name_of_target_source():
    """Read for one release: the keyword (with a warning), a run's YAML key (with a warning) and the
    saved settings of earlier checkpoints (silently: the user has nothing to change there)."""
    import warnings

    from inplace_ttt.train.config import build_config

    with pytest.warns(FutureWarning, match=r"TTTConfig\(target=...\) is deprecated; use target_source"):
        assert TTTConfig(target="token_embeddings").target_source == "token_embeddings"
    with pytest.warns(FutureWarning, match="target is deprecated; use target_source"):
        assert build_config(TTTConfig, {"target": "token_embeddings"}).target_source == "token_embeddings"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = TTTConfig.from_dict({"layers": [1], "chunk_size": 8, "target": "token_embeddings"})
        assert old.target_source == "token_embeddings" and "target" not in old.to_dict()
        assert old.replace(chunk_size=16).target_source == "token_embeddings"
