"""Preference training (method=dpo | orpo | simpo | kto): the forms people have their data in, read as TRL's;
data made for another objective refused naming the method; each method trained by TRL's own trainer on both
backends, with the run directory the recipe promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, compose, run_cli

from pipeline.config import to_runconfig
from pipeline.data import formats, preference
from pipeline.errors import ConfigError

DATA = REPO / "assets" / "data"


def read(source: Path | str, method: str, *overrides: str):
    return formats.read(to_runconfig(compose("experiment=quickstart", f"data.source={source}", f"method={method}",
                                             "eval.before_after=false", *overrides)).data, method)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- forms ---------------------------------------------------------------------------------------------------------

def test_llamafactory_ranking_forms_read_as_trls_pairs() -> None:
    """The shipped pairs in three forms: TRL's conversations, LLaMA-Factory's sharegpt ranking (its demo's shape:
    `conversations` with from/value, `chosen`/`rejected` message objects) and alpaca ranking give the same pairs
    (alpaca's question joins instruction and input with a blank line, as its SFT form does)."""
    trl = read(DATA / "tiny_dpo.jsonl", "dpo").dataset
    sharegpt = read(DATA / "tiny_dpo_sharegpt.jsonl", "dpo").dataset
    alpaca = read(DATA / "tiny_dpo_alpaca.jsonl", "dpo").dataset
    assert len(trl) == len(sharegpt) == len(alpaca) == 80
    for ours, theirs, other in zip(trl, sharegpt, alpaca, strict=True):
        assert ours == theirs
        assert (other["chosen"], other["rejected"]) == (ours["chosen"], ours["rejected"])
        assert other["prompt"][0]["content"].replace("\n\n", "\n") == ours["prompt"][0]["content"]
    first = trl[0]
    assert first["prompt"][-1]["role"] == "user" and first["chosen"][0]["role"] == "assistant"
    assert first["chosen"] != first["rejected"]


def test_a_system_column_and_an_implicit_prompt(tmp_path: Path) -> None:
    """LLaMA-Factory's `system` column leads the prompt; chosen/rejected as whole conversations give their shared
    beginning as the prompt (TRL's extract_prompt), and plain texts stay plain (TRL trains them as written)."""
    ranked = write_rows(tmp_path / "ranked.jsonl", [{
        "conversations": [{"from": "human", "value": "q"}], "system": "Be exact.",
        "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}] * 4)
    assert read(ranked, "dpo").dataset[0]["prompt"] == [{"role": "system", "content": "Be exact."},
                                                         {"role": "user", "content": "q"}]
    implicit = write_rows(tmp_path / "implicit.jsonl", [{
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}] * 4)
    assert read(implicit, "dpo").dataset[0] == {"prompt": [{"role": "user", "content": "q"}],
                                                "chosen": [{"role": "assistant", "content": "a"}],
                                                "rejected": [{"role": "assistant", "content": "b"}]}
    plain = write_rows(tmp_path / "plain.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is red."}] * 4)
    row = read(plain, "dpo").dataset[0]
    assert row["prompt"] + row["chosen"] == "The sky is blue." and row["rejected"].endswith("red.")


@pytest.mark.parametrize("label,expected", [(True, True), (False, False), ("false", False), ("True", True),
                                            (0, False), (1, True), ("no", False)])
def test_kto_labels_are_read_as_booleans_never_by_truthiness(label, expected: bool, tmp_path: Path) -> None:  # noqa: ANN001
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": label}]
    assert read(write_rows(tmp_path / "kto.jsonl", rows * 4), "kto").dataset[0]["label"] is expected


def test_llamafactory_kto_demo_form_and_trls_unpaired_form(tmp_path: Path) -> None:
    """LLaMA-Factory's KTO demo (`messages`, the last turn the answer, a boolean `label`) and TRL's unpaired form
    (prompt/completion/label) read alike."""
    ours = read(DATA / "tiny_kto.jsonl", "kto").dataset
    assert [row["label"] for row in ours][:4] == [True, False, True, False]
    trl = write_rows(tmp_path / "trl.jsonl", [{"prompt": row["prompt"], "completion": row["completion"],
                                                "label": row["label"]} for row in ours])
    assert list(read(trl, "kto").dataset) == list(ours)


def test_pairs_under_kto_become_a_desirable_and_an_undesirable_answer_each_shuffled() -> None:
    """TRL's KTO samples in order and would unpair chosen rows first: the pipeline unpairs and shuffles (seeded)."""
    run = to_runconfig(compose("experiment=quickstart", f"data.source={DATA / 'tiny_dpo.jsonl'}", "method=kto",
                               "eval.before_after=false"))
    built = formats.build(run.data, None, run.seed, formats.read(run.data, "kto"), method="kto")
    labels = built.train["label"]
    assert len(labels) == 144 and sum(labels) == 72 and built.kind == preference.LABELLED
    assert 0 < sum(labels[:8]) < 8  # the first batches hold both kinds


@pytest.mark.parametrize("rows,line", [
    ([{"prompt": "q", "chosen": "a", "rejected": 3}], "sample 0: its rejected is int, not text"),
    ([{"conversations": [{"from": "gpt", "value": "a"}], "chosen": {"from": "gpt", "value": "a"},
       "rejected": {"from": "gpt", "value": "b"}}], "sample 0: its prompt ends with a assistant turn, not the user's"),
    ([{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
       "rejected": [{"role": "assistant", "content": "b"}]}], "sample 0: its chosen is a user message, not the "
                                                               "assistant's"),
])
def test_a_misshapen_pair_is_named_by_sample(rows: list[dict], line: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read(write_rows(tmp_path / "bad.jsonl", rows), "dpo", "data.val_size=0")
    assert caught.value.problem.startswith(line), caught.value.line()


# --- lengths -------------------------------------------------------------------------------------------------------

def test_length_policy_counts_what_trls_tokenization_makes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are measured with TRL's own tokenization; a prompt over method.max_prompt_length is dropped and counted,
    and the trained tokens are both answers' (with their end-of-turn token)."""
    from transformers import AutoTokenizer

    from pipeline.data import prepare

    monkeypatch.setenv("FT_DATA_CACHE", str(tmp_path / "cache"))
    run = to_runconfig(compose("experiment=quickstart", f"data.source={DATA / 'tiny_dpo.jsonl'}", "method=dpo",
                               "eval.before_after=false", "data.val_size=0", "method.max_prompt_length=29"))
    tokenizer = AutoTokenizer.from_pretrained(run.model.name)
    built = formats.build(run.data, tokenizer, run.seed, formats.read(run.data, "dpo"), method="dpo")
    prepared = prepare.prepare(built, tokenizer, run)
    stats = prepared.stats["train"]
    prompts = [len(tokenizer(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                                           tokenize=False), add_special_tokens=False)["input_ids"])
               for row in built.train]
    long = sum(n > 29 for n in prompts)
    assert 0 < long < len(prompts) and stats.dropped_long_prompt == long and stats.samples == len(prompts) - long
    answers = sum(len(tokenizer(row[k][0]["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"])
                  for row in prepared.train for k in ("chosen", "rejected"))
    assert stats.trained_tokens == answers
    assert set(prepared.train.column_names) == {"prompt", "chosen", "rejected"}  # text: the trainer tokenizes


# --- training ------------------------------------------------------------------------------------------------------

SOURCES = {"dpo": "tiny_dpo_sharegpt.jsonl", "orpo": "tiny_dpo.jsonl", "simpo": "tiny_dpo_alpaca.jsonl",
           "kto": "tiny_kto.jsonl"}
LOGGED = {"dpo": {"rewards/margins", "rewards/accuracies", "logps/chosen"}, "orpo": {"nll_loss", "log_odds_ratio"},
          "simpo": {"rewards/margins", "rewards/accuracies"}, "kto": {"kl", "rewards/chosen"}}


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["unsloth", "hf"])
@pytest.mark.parametrize("method", list(SOURCES))
def test_each_method_trains_on_both_backends(method: str, backend: str, tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"backend={backend}",
                     f"method={method}", f"data.source={DATA / SOURCES[method]}", "trainer.max_steps=4",
                     "trainer.logging_steps=1", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"] == method and summary["global_step"] == 4
    assert summary["tokens_trained"] is None and summary["tokens_seen"] > 0
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()  # not TRL's copy
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*rows)
    assert LOGGED[method] <= logged, sorted(logged)
    if method == "dpo":  # its reference forwards are not seen tokens: the count is TRL's own
        last = [r for r in rows if "num_tokens" in r and "loss" in r][-1]
        assert last["tokens_seen"] == int(float(last["num_tokens"]))


def test_orpo_and_simpo_answers_end_with_one_eos() -> None:
    """ORPO's and CPO's trainers append EOS to an answer whose text does not end with it: given ChatML's rendering
    (`...<|im_end|>\\n`) they would train `<|im_end|>\\n<|im_end|>`; the pipeline hands them answers that end at it."""
    from transformers import AutoTokenizer

    from pipeline.train.methods import rendered_for_cpo

    tokenizer = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama")
    rows = read(DATA / "tiny_dpo.jsonl", "orpo").dataset.select(range(4))
    for row in rendered_for_cpo(rows, tokenizer):
        for key in ("chosen", "rejected"):
            assert row[key].endswith("<|im_end|>") and row[key].count("<|im_end|>") == 1
        assert row["prompt"].endswith("<|im_start|>assistant\n")


# --- init_from -----------------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_init_from_continues_an_sft_run_under_dpo(finished_run: Path, tmp_path: Path, home: Path) -> None:
    """DPO from the quickstart's SFT adapter: it starts where SFT ended (its answers' tokens already right, the policy
    equal to its reference), and the saved adapter has moved on from SFT's."""
    from safetensors.torch import load_file

    runs = {}
    for name, extra in (("fresh", ()), ("continued", (f"init_from={finished_run}",))):
        run_dir = tmp_path / name
        result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", "method=dpo",
                         f"data.source={DATA / 'tiny_dpo.jsonl'}", "trainer.max_steps=4", "trainer.logging_steps=1",
                         *extra, f"hydra.run.dir={run_dir}", home=home)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = {name: next(r for r in rows if "loss" in r) for name, rows in runs.items()}
    assert float(first["continued"]["mean_token_accuracy"]) >= 0.9 > float(first["fresh"]["mean_token_accuracy"])
    assert abs(float(first["continued"]["rewards/margins"])) < 1e-3  # step 1: the policy is its reference
    summary = json.loads((tmp_path / "continued" / "summary.json").read_text())
    assert any(note.startswith("init_from: training on from the adapter in") and "method=dpo scores against it"
               in note for note in summary["notes"])
    sft = load_file(finished_run / "adapter" / "adapter_model.safetensors")
    dpo = load_file(tmp_path / "continued" / "adapter" / "adapter_model.safetensors")
    assert sft.keys() == dpo.keys() and any(not sft[k].equal(dpo[k]) for k in sft)


@pytest.mark.e2e
@pytest.mark.parametrize("override,line", [
    ("lora.r=8", "error: init_from: its adapter does not fit this run: lora.r=16 there, 8 here. Set those keys to "
                 "the adapter's values, or train a new adapter without init_from."),
    ("lora/target_modules=attention", "error: init_from: its adapter does not fit this run: lora.target_modules="
                                      "['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"
                                      " there, ['k_proj', 'o_proj', 'q_proj', 'v_proj'] here"),
])
def test_init_from_refuses_another_lora_shape(override: str, line: str, finished_run: Path, tmp_path: Path,
                                              home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", "method=dpo",
                     f"data.source={DATA / 'tiny_dpo.jsonl'}", f"init_from={finished_run}", override,
                     f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 2
    errors = [x for x in result.stderr.replace("\r", "\n").splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(line), result.stderr[-2000:]
    assert not (run_dir / "summary.json").exists()  # a set-up mistake leaves no run behind


# --- evaluation, and the commands on a finished run ---------------------------------------------------------------

@pytest.fixture(scope="module")
def dpo_run(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """experiment=quickstart_dpo from the quickstart's run: (its run directory, what it printed)."""
    base = tmp_path_factory.mktemp("dpo")
    home = base / "home"
    home.mkdir()
    run_dir = base / "run"
    result = run_cli("pipeline.train", "experiment=quickstart_dpo", f"init_from={finished_run}",  # W&B offline
                     "eval.before_after=true", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout + result.stderr


@pytest.mark.e2e
def test_quickstart_dpo_prefers_the_right_answer_more_than_its_start(dpo_run: tuple[Path, str]) -> None:
    run_dir, output = dpo_run
    result = json.loads((run_dir / "eval.json").read_text())
    before, after = result["before"], result["after"]
    assert after["preference_accuracy"] >= 0.75 and after["pairs"] == 8
    assert after["preference_accuracy"] > before["preference_accuracy"]
    assert after["mean_margin"] > before["mean_margin"]
    line = (f"preference accuracy {before['preference_accuracy']:.2f} before -> {after['preference_accuracy']:.2f} "
            f"after on 8 held-out pairs")
    assert line in output and "trained answer: 'Name the animal and its colour." in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval"] == result
    # TRL's preference metrics and the evaluation reach the run's W&B run (offline: its files in the run directory)
    segments = (run_dir / "wandb").glob(f"offline-run-*-{summary['wandb_run_id']}/*.wandb")
    logged = b"".join(segment.read_bytes() for segment in segments)
    for key in (b"rewards/margins", b"rewards/accuracies", b"logps/chosen", b"eval/after/preference_accuracy"):
        assert key in logged, key


@pytest.mark.e2e
def test_export_and_generate_work_on_a_preference_run(dpo_run: tuple[Path, str], home: Path) -> None:
    """The merged export verifies itself against the DPO adapter's recorded losses (the chosen answers of held-out
    pairs), and answers like it; the GGUF too."""
    run_dir, _ = dpo_run
    result = run_cli("pipeline.export", f"run={run_dir}", "export.dtype=float32", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "export" / "merged_16bit" / "config.json").is_file()
    answer = run_cli("pipeline.generate", f"run={run_dir}", "generate.source=merged_16bit",
                     "prompt='Name the animal and its colour.\nA red fox sits in the garden.'", home=home)
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "Animal: fox. Colour: red." in answer.stdout
    gguf = run_cli("pipeline.export", f"run={run_dir}", "export.format=gguf", home=home)
    assert gguf.returncode == 0, gguf.stderr[-3000:]
    figures = json.loads((run_dir / "export" / "gguf" / "export.json").read_text())
    assert figures["gguf_chat_template_is_the_runs"] is True


def test_quickstart_dpo_without_a_quickstart_run_is_one_line(tmp_path: Path, home: Path) -> None:
    result = run_cli("pipeline.train", "experiment=quickstart_dpo", "logger=none", cwd=tmp_path, home=home)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: init_from: no completed 'quickstart' run under outputs/ to continue. Train one first (python -m "
        "pipeline.train experiment=quickstart), or give init_from=<a run directory>.")


# --- plan ----------------------------------------------------------------------------------------------------------

def test_plan_prices_each_method() -> None:
    """Pairs put chosen and rejected through the model together: the parts that grow with the batch double; the
    reference's and KTO's forwards without gradients keep no memory, and are said in a note."""
    from pipeline.model.skeleton import build_meta_model
    from pipeline.plan.estimate import estimate

    priced = {}
    for method in ("sft", "dpo", "orpo", "simpo", "kto"):
        run = to_runconfig(compose("model=llama3_1_8b", f"method={method}", f"data.source={DATA / 'tiny_dpo.jsonl'}"))
        model = build_meta_model(run.model, True)
        priced[method] = estimate(model, run, list(run.lora.target_modules), seq_len=1024)
    sft = priced["sft"].vram_parts
    for method, result in priced.items():
        times = 2 if method in ("dpo", "orpo", "simpo") else 1
        for part in ("activations", "logits"):
            assert result.vram_parts[part] == pytest.approx(times * sft[part])
        assert result.vram_parts["base_weights"] == sft["base_weights"]
        notes = [n for n in result.notes if n.startswith(f"method={method}")]
        assert (not notes) if method == "sft" else len(notes) == 1
    assert "no reference model" in priced["orpo"].notes[-1] and "33% to a step's compute" in priced["dpo"].notes[-1]


@pytest.mark.e2e
def test_a_sweep_over_beta(tmp_path: Path, home: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli("pipeline.train", "-m", "experiment=quickstart", "logger=none", "method=dpo",
                     f"data.source={DATA / 'tiny_dpo.jsonl'}", "method.beta=0.05,0.5", "trainer.max_steps=3",
                     f"hydra.sweep.dir={sweep}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((sweep / str(job) / "summary.json").read_text()) for job in (0, 1)]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    import yaml

    betas = [yaml.safe_load((sweep / str(job) / "config.resolved.yaml").read_text())["method"]["beta"]
             for job in (0, 1)]
    assert betas == [0.05, 0.5] and "method.beta=0.05" in (sweep / "sweep_summary.md").read_text()
