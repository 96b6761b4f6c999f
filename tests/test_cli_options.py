"""The shared command-line options of ``ifseg_deploy.commands.options``, on a small click command of their own."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ifseg_deploy.commands.options import categories_option, parse_size, parse_sizes, read_categories


@click.command()
@click.option("--size", callback=parse_size)
@click.option("--sizes", callback=parse_sizes)
@categories_option
def probe(size, sizes, categories, categories_file):
    names = read_categories(categories, categories_file) if categories or categories_file else None
    click.echo(repr((size, sizes, names)))


def run(*args: str):
    return CliRunner().invoke(probe, list(args))


def test_sizes_are_read_as_height_by_width():
    result = run("--size", "512x683", "--sizes", "64x96, 32, 64X96,,80*80")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "((512, 683), [(64, 96), (32, 32), (80, 80)], None)"


@pytest.mark.parametrize("args, message", [
    (["--size", "512x"], "cannot read '512x' as a size"),
    (["--size", "0x5"], "must be positive"),
    (["--sizes", "64x96,banana"], "cannot read 'banana' as a size"),
    (["--sizes", " , "], "no size given"),
])
def test_bad_sizes_are_usage_errors(args, message):
    result = run(*args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_categories_from_the_option_or_a_file(tmp_path):
    assert run("-c", "floor, wall").output.strip() == "(None, None, ['floor', 'wall'])"
    f = tmp_path / "names.txt"
    f.write_text("# mine\nfloor\n\nconcrete wall\n", encoding="utf-8")
    assert run("--categories-file", str(f)).output.strip() == "(None, None, ['floor', 'concrete wall'])"
    both = run("-c", "floor", "--categories-file", str(f))
    assert both.exit_code == 2 and "exactly one of --categories or --categories-file" in both.output
    f.write_bytes(b"\xff\xfe floor")
    assert run("--categories-file", str(f)).exit_code == 2
