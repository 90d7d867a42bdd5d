"""Task data through `datasets`: JSONL, CSV, parquet and a saved dataset dir give the same samples."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from harness.backends.hf import ModelOptions, load_model, resolve_checkpoint
from harness.core.data import read_rows
from harness.core.errors import HarnessError
from harness.core.samples import build_samples
from harness.core.taskspec import TaskSpec

ROWS = [{"id": "a", "question": "Q1?", "answer": "x"}, {"id": "b", "question": "Q2?", "answer": "y"}]


def spec_for(data: Path, **fields: object) -> TaskSpec:
    base = {
        "name": "t",
        "kind": "generate",
        "data": data,
        "template": "Q: {{ question }}\nA:",
        "reference_field": "answer",
        "id_field": "id",
        "metrics": ["exact_match"],
    }
    return TaskSpec.model_validate({**base, **fields})


@pytest.fixture
def data_files(tmp_path: Path) -> dict[str, Path]:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    dataset = datasets.Dataset.from_list(ROWS)
    dataset.to_csv(tmp_path / "rows.csv", index=False)
    dataset.to_parquet(tmp_path / "rows.parquet")
    dataset.save_to_disk(tmp_path / "rows_dataset")
    return {
        "jsonl": jsonl,
        "csv": tmp_path / "rows.csv",
        "parquet": tmp_path / "rows.parquet",
        "hf_disk": tmp_path / "rows_dataset",
    }


@pytest.mark.parametrize("data_format", ["jsonl", "csv", "parquet", "hf_disk"])
def test_every_format_gives_the_same_samples(data_files: dict[str, Path], data_format: str) -> None:
    spec = spec_for(data_files[data_format])
    samples = build_samples(spec, read_rows(spec.data))
    assert [(s.id, s.prompt, s.references) for s in samples] == [("a", "Q: Q1?\nA:", ["x"]), ("b", "Q: Q2?\nA:", ["y"])]


def test_csv_rows_report_file_lines(data_files: dict[str, Path]) -> None:
    assert [row.line for row in read_rows(data_files["csv"])] == [2, 3]  # line 1 is the header


def test_fewshot_examples_prefix_every_prompt(data_files: dict[str, Path]) -> None:
    spec = spec_for(data_files["jsonl"], fewshot=[{"question": "Q0?", "answer": "w"}], fewshot_separator="\n---\n")
    samples = build_samples(spec, read_rows(spec.data))
    assert samples[0].prompt == "Q: Q0?\nA: w\n---\nQ: Q1?\nA:"


def test_bad_template_syntax_names_the_field(data_files: dict[str, Path]) -> None:
    spec = spec_for(data_files["jsonl"], template="{{ question ")
    with pytest.raises(HarnessError, match="field 'template'"):
        build_samples(spec, read_rows(spec.data))


def test_a_local_checkpoint_folder_is_a_model() -> None:
    embedded_dir = resolve_checkpoint("gemma-3-270m")
    by_path = load_model(ModelOptions(name=str(embedded_dir)))
    assert by_path.base_fingerprint == load_model(ModelOptions()).base_fingerprint


def test_templates_cannot_reach_python_internals(data_files: dict[str, Path], tmp_path: Path) -> None:
    """Task templates render in Jinja's sandbox: the classic escape to `os` is refused (it ran a shell command
    before), and the error names the row and the field."""
    marker = tmp_path / "escaped"
    escape = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    spec = spec_for(data_files["jsonl"], template=escape + " {{ question }}")
    with pytest.raises(HarnessError, match=r"rows.jsonl:1: field 'template': template failed: .*unsafe"):
        build_samples(spec, read_rows(data_files["jsonl"]))
    assert not marker.exists()


def test_a_fewshot_answer_given_as_a_list_shows_its_first_reference(data_files: dict[str, Path]) -> None:
    """Rows may carry several references; a few-shot example written the same way showed "['Lisbon', 'lisbon']"."""
    fewshot = [{"question": "Capital of Portugal?", "answer": ["Lisbon", "lisbon"]}]
    spec = spec_for(data_files["jsonl"], fewshot=fewshot)
    first = build_samples(spec, read_rows(data_files["jsonl"]))[0]
    assert first.prompt.startswith("Q: Capital of Portugal?\nA: Lisbon\n\nQ: Q1?")


def test_a_json_file_holding_an_array_is_read_as_rows(tmp_path: Path) -> None:
    array = tmp_path / "rows.json"
    array.write_text('[\n  {"text": "one"},\n  {"text": "two"}\n]\n', encoding="utf-8")
    assert [row.values["text"] for row in read_rows(array)] == ["one", "two"]
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
    assert [row.line for row in read_rows(lines)] == [1, 2]  # JSON Lines under a .json name still reads as such


def test_a_json_array_of_non_objects_names_the_item(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"text": "one"}, "two"]', encoding="utf-8")
    with pytest.raises(HarnessError, match=r"item 2 of the array is not a JSON object"):
        read_rows(path)
    path.write_text('{\n  "rows": []\n}\n', encoding="utf-8")
    with pytest.raises(HarnessError, match="must hold an array of objects"):
        read_rows(path)


def test_csv_errors_name_the_line_a_record_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('id,question,answer\na,"two\nlines",x\nb,Q2,y,extra\n', encoding="utf-8")
    with pytest.raises(HarnessError, match=r"rows\.csv:4: 4 fields where the header has 3"):
        read_rows(path)
    path.write_text('id,question,answer\na,Q1,x\nb,"never closed,y\nc,Q3,z\n', encoding="utf-8")
    with pytest.raises(HarnessError, match=r"rows\.csv:3: malformed CSV: a quoted field that starts here"):
        read_rows(path)
    path.write_text('id,question,answer\na,"two\nlines",x\n\nb,Q2,y\n', encoding="utf-8")
    assert [(row.line, row.values["id"]) for row in read_rows(path)] == [(2, "a"), (5, "b")]


@pytest.fixture
def saved_splits(tmp_path: Path) -> Path:
    """A saved DatasetDict folder: train (both rows) and test (the first)."""
    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(folder)
    return folder


def test_a_saved_dataset_dict_needs_its_split_named(saved_splits: Path, tmp_path: Path) -> None:
    folder = saved_splits
    with pytest.raises(HarnessError, match=r"saved: field 'split': the saved dataset has splits train, test: name one"):
        read_rows(folder)
    with pytest.raises(HarnessError, match=r"no split 'dev' \(the saved dataset has train, test\)"):
        read_rows(folder, split="dev")
    assert [row.values["id"] for row in read_rows(folder, split="test")] == ["a"]
    (tmp_path / "rows.csv").write_text("id\n1\n", encoding="utf-8")
    with pytest.raises(HarnessError, match="split is for a saved dataset folder, not csv data"):
        read_rows(tmp_path / "rows.csv", split="test")


def test_a_saved_folder_split_drives_samples_and_fewshot_and_the_fingerprint(saved_splits: Path) -> None:
    from harness.core.samples import load_samples

    folder = saved_splits
    spec = spec_for(folder, split="test", num_fewshot=1, fewshot_split="train", fewshot_sampler="first_n")
    samples, _ = load_samples(spec)
    assert [s.prompt for s in samples] == ["Q: Q1?\nA: x\n\nQ: Q1?\nA:"]  # the test row, after train's first
    assert spec.data_label == f"{folder}:test"
    assert spec_for(folder).fingerprint("d") != spec_for(folder, split="test").fingerprint("d")
    with pytest.raises(ValueError, match=r"a hub dataset names its split as dataset\.split"):
        TaskSpec.model_validate({**spec.model_dump(), "data": None, "dataset": {"path": "org/x"}})
