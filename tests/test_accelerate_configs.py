"""Every accelerate config in recipes/accelerate/ parses, says how to launch it, and means what it says.

Only the CPU config can run here (tests/test_cli.py launches it), and the two-machine one with the
CPU's overrides (tests/test_multi_process.py runs two "machines" on the loopback address); the GPU
ones are checked as far as accelerate's own launcher goes without GPUs: known keys, and the launch
mode they select.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import REPO

FOLDER = REPO / "recipes" / "accelerate"
CONFIGS = sorted(FOLDER.glob("*.yaml"))
# file -> (multi_gpu, use_deepspeed, use_fsdp) as accelerate's launcher resolves them
EXPECTED_MODES = {
    "single_gpu.yaml": (False, False, False),
    "multi_gpu.yaml": (True, False, False),
    "zero2.yaml": (False, True, False),
    "zero3.yaml": (False, True, False),
    "fsdp.yaml": (False, False, True),
    "cpu_2proc.yaml": (True, False, False),
    "multi_node.yaml": (True, False, False),
}


def test_the_promised_configs_exist():
    assert sorted(EXPECTED_MODES) == sorted(p.name for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses_and_its_header_says_how_to_launch_it(path):
    text = path.read_text()
    config = yaml.safe_load(text)
    assert isinstance(config, dict) and config["compute_environment"] == "LOCAL_MACHINE"
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    header_text = "\n".join(header)
    assert "Hardware:" in header_text
    assert re.search(
        rf"accelerate launch --config_file recipes/accelerate/{path.name} .*-m ntp_rl train", header_text
    )
    guide = (REPO / "docs" / "scale.md").read_text()
    assert f"recipes/accelerate/{path.name}" in guide


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_accelerate_accepts_every_key(path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    ClusterConfig.from_yaml_file(str(path))  # raises on unknown top-level keys
    options = {action.dest for action in launch_command_parser()._actions}
    config = yaml.safe_load(path.read_text())
    for section, prefix in (("deepspeed_config", ""), ("fsdp_config", "fsdp_")):
        for key in config.get(section) or {}:
            name = key if key.startswith(prefix) else prefix + key
            # accelerate copies these onto launch options by name and silently ignores the rest
            assert name in options, f"{path.name}: {section}.{key} is not an accelerate launch option"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_launcher_resolves_the_intended_mode(path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "ntp_rl", "train", "r.yaml"])
    args, _, _ = _validate_launch_command(args)
    assert (bool(args.multi_gpu), bool(args.use_deepspeed), bool(args.use_fsdp)) == EXPECTED_MODES[path.name]
    if path.name.startswith("zero"):
        assert int(args.zero_stage) == int(path.name[4])


def test_fsdp_config_builds_accelerates_plugin(monkeypatch):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(FOLDER / "fsdp.yaml"), "-m", "ntp_rl", "train", "r.yaml"]
    )
    args, _, _ = _validate_launch_command(args)
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


def _torchrun_arguments(path, *flags):
    """What accelerate hands torchrun for this config and these launch flags."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(path), *flags, "-m", "ntp_rl", "train", "r.yaml"]
    )
    args, _, _ = _validate_launch_command(args)
    prepare_multi_gpu_env(args)
    return args


def test_multi_node_config_spans_two_machines_at_one_fixed_address():
    # Every machine must name the same rendezvous port; --num_processes counts all machines' processes.
    args = _torchrun_arguments(
        FOLDER / "multi_node.yaml", "--machine_rank", "1", "--main_process_ip", "10.0.0.1"
    )
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert (args.rdzv_backend, args.rdzv_endpoint) == ("static", "10.0.0.1:29500")


def test_cpu_config_picks_a_free_port_per_launch():
    # main_process_port: 0, so that two runs (or two test sessions) on one machine do not collide.
    assert yaml.safe_load((FOLDER / "cpu_2proc.yaml").read_text())["main_process_port"] == 0
    args = _torchrun_arguments(FOLDER / "cpu_2proc.yaml")
    assert int(args.master_port) > 0
