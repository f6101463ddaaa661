"""SVAMP: packaged data, the seeded 700/300 split, row construction, prompts, reward and hub errors."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import datasets
import pytest

from tokrl.tasks import get_task
from tokrl.tasks.loading import seeded_permutation
from tokrl.tasks.svamp import SVAMP_TEMPLATE, packaged_svamp

SHARED_COPY = Path(__file__).resolve().parents[3] / "shared" / "data" / "svamp" / "SVAMP.json"


@pytest.fixture(scope="module")
def svamp():
    return get_task("svamp")


def test_packaged_files_are_package_resources() -> None:
    # importlib.resources, as the loader uses it: this is what an installed wheel must ship.
    folder = files("tokrl.tasks").joinpath("data", "svamp")
    assert "MIT License" in folder.joinpath("LICENSE").read_text(encoding="utf-8")
    rows = json.loads(folder.joinpath("SVAMP.json").read_text(encoding="utf-8"))
    assert len(rows) == 1000
    assert len({row["ID"] for row in rows}) == 1000


@pytest.mark.skipif(not SHARED_COPY.is_file(), reason="the shared SVAMP copy is not next to this checkout")
def test_packaged_copy_matches_the_shared_copy() -> None:
    packaged = files("tokrl.tasks").joinpath("data", "svamp", "SVAMP.json").read_bytes()
    assert packaged == SHARED_COPY.read_bytes()


def test_seeded_permutation_by_hand() -> None:
    # random.Random(1).random() gives 0.1343..., 0.8474...: i=2 -> j=int(0.134*3)=0 swaps 2<->0; i=1 ->
    # j=int(0.847*2)=1 keeps. random.Random(0): 0.8444 -> j=2, 0.7579 -> j=1: identity.
    assert seeded_permutation(3, 1) == [2, 1, 0]
    assert seeded_permutation(3, 0) == [0, 1, 2]
    order = seeded_permutation(1000, 0)
    assert sorted(order) == list(range(1000)) and order != list(range(1000))


def test_split_sizes_disjoint_and_cover_everything(svamp) -> None:
    train, test = svamp.split("train"), svamp.split("test")
    assert (train.num_rows, test.num_rows) == (700, 300)
    train_ids, test_ids = set(train["ID"]), set(test["ID"])
    assert len(train_ids) == 700 and len(test_ids) == 300
    assert not train_ids & test_ids
    assert train_ids | test_ids == set(packaged_svamp()["ID"])


def test_split_is_the_seed_0_permutation(svamp) -> None:
    ids = packaged_svamp()["ID"]
    order = seeded_permutation(1000, 0)
    assert svamp.split("train")["ID"] == [ids[i] for i in order[:700]]
    assert svamp.split("test")["ID"] == [ids[i] for i in order[700:]]
    # Pinned: the published split must never drift (e.g. with a Python or datasets upgrade).
    assert svamp.split("train")["ID"][:3] == ["chal-588", "chal-680", "chal-915"]
    assert svamp.split("test")["ID"][:3] == ["chal-941", "chal-721", "chal-300"]


def test_split_is_deterministic_and_seeded(svamp) -> None:
    again = get_task("svamp")
    assert again.split("test")["ID"] == svamp.split("test")["ID"]
    other = get_task("svamp", seed=1)
    assert other.split("test")["ID"] != svamp.split("test")["ID"]
    assert other.options["seed"] == 1


def test_rows_by_hand(svamp) -> None:
    rows = {row["ID"]: row for name in ("train", "test") for row in svamp.split(name)}
    chal1 = rows["chal-1"]
    assert chal1["prompt"] == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert chal1["answer"] == "51"  # Answer 51.0 without the trailing ".0"
    assert all(not answer.endswith(".0") for answer in svamp.split("train")["answer"])


def test_prompt_template_and_reference(svamp) -> None:
    assert (
        svamp.format_prompt("Q?")
        == "Question: Q?\nThink briefly, then give the final number after 'answer:'.\nSolution:\n"
    )
    assert svamp.options["template"] == SVAMP_TEMPLATE
    assert svamp.reference_completion({"prompt": "Q?", "answer": "51"}) == "answer: 51"
    custom = get_task("svamp", template="Q: {prompt} A:")
    assert custom.format_prompt("2+2?") == "Q: 2+2? A:"
    braces = get_task("svamp", template="{x} {prompt}")  # placeholder replaced, braces elsewhere are kept
    assert braces.format_prompt("p") == "{x} p"
    with pytest.raises(ValueError, match=r"must be a string containing '\{prompt\}'"):
        get_task("svamp", template="no placeholder")


def test_reference_completions_score_one_and_wrong_numbers_zero(svamp) -> None:
    for name in ("train", "test"):
        split = svamp.split(name)
        references = [svamp.reference_completion(row) for row in split]
        assert svamp.reward(references, answer=split["answer"]) == [1.0] * split.num_rows
        wrong = [f"answer: {float(answer) + 1}" for answer in split["answer"]]
        assert svamp.reward(wrong, answer=split["answer"]) == [0.0] * split.num_rows


def test_reward_with_trainer_columns(svamp) -> None:
    row = svamp.split("test")[0]
    columns = {key: [value] * 3 for key, value in row.items()}  # the trainer repeats each column G times
    completions = [f"so answer: {row['answer']}", "answer: 100000", ""]
    assert svamp.reward(completions, **columns) == [1.0, 0.0, 0.0]
    assert svamp.reward_name == "svamp_accuracy"


def test_local_json_path_gets_the_seeded_split(tmp_path: Path) -> None:
    rows = [{"Body": f"Tom has {i} pens.", "Question": "How many?", "Answer": float(i)} for i in range(10)]
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(rows))
    task = get_task("svamp", dataset=str(path), test_size=3)
    assert (task.split("train").num_rows, task.split("test").num_rows) == (7, 3)
    order = seeded_permutation(10, 0)
    assert task.split("test")["answer"] == [str(i) for i in order[7:]]
    assert task.split("test")["prompt"][0] == f"Tom has {order[7]} pens. How many?"
    assert task.options["dataset"] == str(path)


def test_dataset_dict_with_splits_is_kept() -> None:
    def rows(values):
        return datasets.Dataset.from_dict(
            {"Body": ["b"] * len(values), "Question": ["q"] * len(values), "Answer": values}
        )

    task = get_task("svamp", dataset=datasets.DatasetDict({"train": rows([1.0, 2.0]), "test": rows([2.5])}))
    assert task.split("train")["answer"] == ["1", "2"]
    assert task.split("test")["answer"] == ["2.5"]
    assert task.split("test")["prompt"] == ["b q"]


def test_bad_test_size() -> None:
    with pytest.raises(ValueError, match="test_size must be between 1 and 999"):
        get_task("svamp", test_size=1000)


def test_unknown_split(svamp) -> None:
    with pytest.raises(ValueError, match=r"unknown split 'validation'; expected one of \['train', 'test'\]"):
        svamp.split("validation")


def test_hub_id_offline_gives_a_clear_error() -> None:
    # The conftest puts the hub in offline mode: a lookup fails at once instead of hanging on retries.
    with pytest.raises(ConnectionError) as raised:
        get_task("svamp", dataset="ChilleD/SVAMP")
    message = str(raised.value)
    assert "'ChilleD/SVAMP'" in message
    assert "Hub could not be reached" in message
    assert "packaged with tokrl" in message and "local path" in message


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task("svamp", dataset=str(tmp_path / "nope.json"))
