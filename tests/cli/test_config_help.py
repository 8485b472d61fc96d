"""The schema walker behind ``--help``: any nested dataclass, transformers' `TrainingArguments` included."""

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from inplace_ttt.cli.config_help import describe_schema


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Inner:
    depth: int = 3
    shade: Colour | str = Colour.RED
    kind: Literal["a", "b"] = "b"
    size: str = field(default="small", metadata={"help": "How big it is.\n  Second sentence, not shown.", "choices": ["small", "large"]})
    tags: list[str] = field(default_factory=lambda: ["x", "y"])


@dataclass
class Schema:
    name: str = ""
    inner: Inner = field(default_factory=lambda: Inner(depth=7))
    maybe: Inner | None = None
    plain: str = field(default="free", metadata={"choices": ("free", "bound")})


def test_each_key_shows_its_default_type_choices_and_first_help_sentence():
    lines = describe_schema(Schema)
    text = "\n".join(lines)
    assert re.search(r"^  name +'' +str$", text, re.M)
    assert re.search(r"^  plain +free +str; one of: free, bound$", text, re.M)  # choices declared in the field's metadata
    assert re.search(r"^  inner\.depth +7 +int$", text, re.M)  # the section's default_factory, not the class default
    assert re.search(r"^  inner\.shade +red +Colour \| str; one of: red, blue$", text, re.M)
    assert re.search(r"^  inner\.kind +b +str; one of: a, b$", text, re.M)
    assert re.search(r"^  inner\.size +small +str; one of: small, large  # How big it is$", text, re.M)
    assert re.search(r"^  inner\.tags +\[x, y\] +list\[str\]$", text, re.M)
    assert "inner:" in lines and "maybe: (default null: off; give the section to turn it on)" in lines
    assert re.search(r"^  maybe\.depth +3 +int$", text, re.M)
    assert lines.index("inner:") > lines.index([line for line in lines if line.startswith("  plain")][0])  # keys first, then sections


def test_transformers_training_arguments_walk_one_line_a_field():
    from transformers import TrainingArguments

    @dataclass
    class Train(TrainingArguments):
        mode: str = field(default="full", metadata={"help": "Which parameters train.", "choices": ["full", "ttt_only", "lora"]})

    @dataclass
    class Run:
        train: Train = field(default_factory=lambda: Train(output_dir="runs/x"))

    lines = describe_schema(Run)
    text = "\n".join(lines)
    assert re.search(r"^  train\.learning_rate +5e-05 +float  # The initial learning rate", text, re.M)
    assert re.search(r"^  train\.lr_scheduler_type +linear +SchedulerType \| str; one of: linear, cosine, ", text, re.M)
    assert re.search(r"^  train\.optim +\S+ +OptimizerNames \| str; one of: .*, \.\.\. \(\d+ in all\)", text, re.M)
    assert re.search(r"^  train\.mode +full +str; one of: full, ttt_only, lora  # Which parameters train$", text, re.M)
    assert not any(line.strip().startswith("train._") for line in lines)  # private fields are not keys
    keys = [line.split()[0] for line in lines if line.startswith("  ")]
    assert len(keys) == len(set(keys)) > 100
