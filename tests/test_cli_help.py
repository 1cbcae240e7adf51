"""Every command's --help explains every option, and train's help says which model it trains."""
from __future__ import annotations

import argparse
import importlib

import pytest

from aeutils.cli import COMMANDS, main


def _parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m aeutils {name}")
    importlib.import_module(COMMANDS[name][0]).add_cli_arguments(parser)
    return parser


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help(name: str) -> None:
    parser = _parser(name)
    bare = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not (a.help or "").strip() and not isinstance(a, argparse._SubParsersAction)]
    assert not bare, f"{name} --help: no help for {bare}"


def test_train_help_shows_defaults_and_names_the_default_and_shipped_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    from aeutils.checkpoint import load_model
    from aeutils.model import Autoencoder, AutoencoderConfig, count_parameters

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(1 - SSIM) weight (default 0)" in text and "AdamW weight decay (default 0)" in text
    assert f"{count_parameters(Autoencoder(AutoencoderConfig())):,} parameters" in text  # the default, as built
    shipped = load_model()
    assert f"{count_parameters(shipped):,} parameters" in text and "aeutils/pretrained/README.md" in text
    assert f"--config n_blocks={shipped.config.n_blocks} widths={','.join(map(str, shipped.config.widths))}" in text


def test_encode_help_explains_precision_and_mentions_no_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "manifest" not in text
    assert "fp32 (float32, exact and reproducible" in text and "bf16 (bfloat16 autocast" in text
