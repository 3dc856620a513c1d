"""Several processes as the launchers start them: two "machines" on the loopback address, and a
signal to one rank of two. gloo on the CPUs, one OpenMP thread per process.

The plain two-process run on one machine (recipes/accelerate/cpu_2proc.yaml) is tested in
tests/test_cli.py; here it is the reference the two-machine run must equal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import yaml

from tests.conftest import REPO

ACCELERATE = REPO / "recipes" / "accelerate"
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TIMEOUT_SECONDS = 600  # far above any run here: a hung rendezvous fails the test instead of hanging it


def _free_port() -> int:
    """A port nothing listens on now (the OS picks it), for a rendezvous every "machine" must name."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _fail_message(*logs) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)


def test_two_machines_on_loopback_train_as_one_machine_with_two_processes(tmp_path, tiny_model_path):
    """recipes/accelerate/multi_node.yaml, one process on each of two "machines" (machine_rank 0 and 1
    on 127.0.0.1), trains the smoke quickstart to the same adapters, bit for bit, as cpu_2proc.yaml:
    the same world size, ranks and data shards; only the rendezvous differs."""
    # The probes have their own tests and train nothing; without them each run is a third shorter.
    overrides = ["stages.eval.probes=null"]
    train = ["-m", "ntp_rl", "train", QUICKSTART, "--smoke", *overrides]
    one, two = tmp_path / "one_machine", tmp_path / "two_machines"
    reference = subprocess.run(
        [*LAUNCH, "--config_file", str(ACCELERATE / "cpu_2proc.yaml"), *train, "--output-dir", str(one)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT_SECONDS,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    port = str(_free_port())
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    machines = []
    for rank, log in enumerate(logs):
        # The GPU file with what a CPU-only machine needs: the total process count and no bf16 autocast.
        command = [
            *LAUNCH,
            "--config_file",
            str(ACCELERATE / "multi_node.yaml"),
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
            *train,
            "--output-dir",
            str(two),
        ]
        with log.open("w") as out:
            machines.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV))
    try:
        codes = [machine.wait(timeout=TIMEOUT_SECONDS) for machine in machines]
    finally:
        for machine in machines:
            if machine.poll() is None:
                machine.kill()
    assert codes == [0, 0], _fail_message(*logs)

    manifests = list(two.rglob("manifest.json"))
    assert len(manifests) == 1  # written by global rank 0 alone
    manifest = json.loads(manifests[0].read_text())
    assert manifest["world_size"] == 2
    assert all(stage["status"] == "complete" for stage in manifest["stages"].values())
    for stage in ("sft", "rl"):
        adapter = f"quickstart-smoke/{stage}/adapter/adapter_model.safetensors"
        assert (two / adapter).read_bytes() == (one / adapter).read_bytes(), f"{stage} adapters differ"


def _rank_process(launcher: subprocess.Popen, rank: int):
    """The worker process of `rank` among the launcher's descendants, once it has started."""
    import psutil  # a dependency of accelerate

    deadline = time.time() + 120
    while time.time() < deadline and launcher.poll() is None:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} process appeared")


def test_a_signal_to_one_rank_stops_both_after_the_same_step(tmp_path, tiny_model_path):
    """SIGTERM to rank 1 only: both ranks stop after the same step and save one checkpoint together
    (rank 0 the weights and trainer state, each rank its RNG state); the same command resumes it."""
    max_steps = 10
    recipe = {
        "run": {"name": "r", "output_dir": str(tmp_path / "runs")},
        "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
        "data": {"arithmetic": {"num_train": 64, "num_test": 4}},
        "stages": [
            {
                "kind": "sft",
                "eval_examples": 0,
                "trainer": {
                    "max_steps": max_steps,
                    "per_device_train_batch_size": 2,
                    "logging_steps": 1,
                    "save_steps": 1000,
                    "warmup_steps": 0,
                },
            }
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [
        *LAUNCH,
        "--config_file",
        str(ACCELERATE / "cpu_2proc.yaml"),
        "-m",
        "ntp_rl",
        "train",
        str(path),
    ]
    stage = tmp_path / "runs" / "r" / "sft"
    metrics = stage / "metrics.jsonl"
    log = tmp_path / "interrupted.log"
    with log.open("w") as out:
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        rank1 = _rank_process(launcher, 1)
        deadline = time.time() + 180
        while time.time() < deadline and launcher.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert launcher.poll() is None, "the run ended before it could be signalled\n" + _fail_message(log)
        rank1.send_signal(signal.SIGTERM)
        launcher.wait(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    output = log.read_text()
    assert "SIGTERM: stopping after this step" in output, _fail_message(log)
    checkpoints = sorted((stage / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1, (checkpoints, _fail_message(log))
    checkpoint = checkpoints[0]
    step = int(checkpoint.name.split("-")[1])
    assert 2 <= step < max_steps
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    # Each rank saves its own RNG state into the checkpoint of the step it stopped after: both here.
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (stage / "COMPLETE").exists()
    manifest = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "interrupted"

    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=TIMEOUT_SECONDS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((stage / "COMPLETE").read_text())
    assert results["resumed_from"] == str(checkpoint) and results["global_step"] == max_steps
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, max_steps + 1))
