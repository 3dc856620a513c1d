"""Recipe validation: every bad config is a UserError naming its key path, with a suggestion."""

from __future__ import annotations

import pytest
import yaml

from ntp_rl.config import apply_override, load_recipe
from ntp_rl.errors import UserError

GOOD = {"run": {"name": "t"}, "stages": [{"kind": "sft", "trainer": {"max_steps": 3}}]}


def _write(tmp_path, recipe) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return str(path)


def test_good_recipe_loads_with_types(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD))
    assert recipe.stages[0].kind == "sft"
    assert recipe.stages[0].trainer == {"max_steps": 3}
    assert recipe.model.name_or_path == "default"
    assert recipe.run.seed == 42


BAD_CASES = [
    # (recipe or YAML text, overrides, expected fragments of the message)
    (
        {**GOOD, "stages": [{"kind": "sft", "trainer": {"lerning_rate": 1e-4}}]},
        [],
        ["stages[0].trainer.lerning_rate", "did you mean learning_rate"],
    ),
    ({**GOOD, "run": {"name": "t", "sed": 1}}, [], ["run.sed", "did you mean seed"]),
    (
        {**GOOD, "model": {"name_or_path": "tiny", "dtyp": "float32"}},
        [],
        ["model.dtyp", "did you mean dtype"],
    ),
    ({**GOOD, "model": {"lora": {"rr": 8}}}, [], ["model.lora.rr", "did you mean r"]),
    ({**GOOD, "model": {"dtype": "float64"}}, [], ["model.dtype"]),
    ({**GOOD, "data": {"sorce": "x"}}, [], ["data.sorce", "did you mean source"]),
    (
        {**GOOD, "stages": [{"kind": "sft", "trainer": {"max_steps": "many"}}]},
        [],
        ["stages[0].trainer.max_steps", "int"],
    ),
    (
        {**GOOD, "stages": [{"kind": "sft", "trainer": {"seed": 3}}]},
        [],
        ["stages[0].trainer.seed", "run.seed"],
    ),
    ({**GOOD, "stages": [{"kind": "dpo"}]}, [], ["stages[0].kind"]),
    ({**GOOD, "stages": [{"trainer": {}}]}, [], ["stages[0]", "kind"]),
    ({**GOOD, "stages": []}, [], ["stages"]),
    ({**GOOD, "stages": [{"kind": "sft"}, {"kind": "sft"}]}, [], ["two stages are named 'sft'"]),
    ({**GOOD, "stages": [{"kind": "rl", "rewards": []}]}, [], ["stages[0].rewards", "at least one reward"]),
    ({**GOOD, "stages": [{"kind": "rl", "rewards": [{"weight": 1}]}]}, [], ["stages[0].rewards[0]", "name"]),
    (
        {**GOOD, "stages": [{"kind": "rl", "rewards": [{"name": "x"}], "trainer": {"num_generatons": 4}}]},
        [],
        ["stages[0].trainer.num_generatons", "did you mean num_generations"],
    ),
    ({**GOOD, "run": {"name": "../escape"}}, [], ["run.name"]),
    ({"stages": GOOD["stages"]}, [], ["run", "Field required"]),
    ("run: {name: t\nstages: [", [], ["not valid YAML"]),
    ("- just\n- a list\n", [], ["YAML mapping"]),
    (
        GOOD,
        ["stages[0].trainer.lerning_rate=3"],
        ["stages[0].trainer.lerning_rate", "did you mean learning_rate"],
    ),
    (GOOD, ["stages[5].trainer.max_steps=3"], ["index out of range"]),
    (GOOD, ["no_equals_sign"], ["expected key.path=value"]),
    (GOOD, ["run.name.x=1"], ["run.name", "not a mapping"]),
    (GOOD, ["model.dtype=[unclosed"], ["not valid YAML"]),
]


@pytest.mark.parametrize(("recipe", "overrides", "fragments"), BAD_CASES)
def test_bad_recipes_name_their_key(tmp_path, recipe, overrides, fragments):
    with pytest.raises(UserError) as info:
        load_recipe(_write(tmp_path, recipe), overrides)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values_and_select_stage_by_name(tmp_path):
    path = _write(tmp_path, GOOD)
    recipe = load_recipe(
        path, ["stages.sft.trainer.learning_rate=3e-4", "model.lora.target_modules=[q_proj, v_proj]"]
    )
    assert recipe.stages[0].trainer["learning_rate"] == 3e-4
    assert recipe.model.lora["target_modules"] == ["q_proj", "v_proj"]


def test_override_creates_missing_mappings():
    raw = {"run": {"name": "t"}}
    apply_override(raw, "data.arithmetic.num_train=10")
    assert raw["data"] == {"arithmetic": {"num_train": 10}}


def test_config_hash_tracks_changes(tmp_path):
    path = _write(tmp_path, GOOD)
    a = load_recipe(path).config_hash()
    assert a == load_recipe(path).config_hash()
    assert a != load_recipe(path, ["stages[0].trainer.max_steps=4"]).config_hash()
    assert a != load_recipe(path, ["stages[0].seed=1"]).config_hash()
    assert a == load_recipe(path, ["stages[0].seed=null"]).config_hash()  # the default: as if unset
    assert a == load_recipe(path, ["model.attn_implementation=null"]).config_hash()
    assert a != load_recipe(path, ["model.attn_implementation=eager"]).config_hash()
    assert a != load_recipe(path, ["model.generation_attn_implementation=sdpa"]).config_hash()


def test_smoke_shrinks_budgets_and_uses_tiny(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD), smoke=True)
    assert recipe.model.name_or_path == "tiny"
    assert recipe.run.name == "t-smoke"
    assert recipe.stages[0].trainer["max_steps"] == 2
    assert recipe.data.arithmetic.num_train == 16


@pytest.mark.parametrize(
    "probes", ["true", "{future: {k: 2, texts: 64}, answer: true, rhyme: {generate: 64}, credit: {texts: 8}}"]
)
def test_smoke_shrinks_the_probes_an_eval_stage_runs(tmp_path, probes):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"run: {{name: p}}\nmodel: {{name_or_path: tiny}}\nstages:\n  - {{kind: eval, probes: {probes}}}\n"
    )
    full = load_recipe(path).stages[0].probes
    small = load_recipe(path, smoke=True).stages[0].probes
    assert small.enabled() == full.enabled() == ["future", "answer", "rhyme", "credit"]
    assert small.future.texts < full.future.texts and small.future.max_tokens < full.future.max_tokens
    assert small.answer.examples < full.answer.examples
    assert small.rhyme.generate < full.rhyme.generate
    assert small.credit.texts < full.credit.texts
    assert small.future.k == full.future.k  # what the recipe asks to measure stays; only budgets shrink


def test_config_hash_of_an_rlhf_recipe_is_stable(tmp_path):
    """Keys added to a stage kind later, left unset, do not change the hash: older runs still resume."""
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "run: {name: h}\n"
        "model: {name_or_path: tiny}\n"
        "stages:\n"
        "  - {kind: sft}\n"
        "  - {kind: reward_model, data: {source: 'synthetic:preferences'}}\n"
        "  - {kind: rl, rewards: [{reward_model: reward_model}]}\n"
        "  - {kind: eval}\n"
    )
    recipe = load_recipe(path)
    assert recipe.config_hash() == "1b968695d73048ba"  # as computed before reward_model.init_from existed
    assert load_recipe(path, ["stages[1].init_from=sft"]).config_hash() != recipe.config_hash()
    assert load_recipe(path, ["stages[2].init_from=sft"]).config_hash() != recipe.config_hash()
    # A removed key (its default was never hashed, so the hash above holds) is refused by name.
    with pytest.raises(UserError, match=r"stages\[2\]\.positive_advantage_weight: unknown key"):
        load_recipe(path, ["stages[2].positive_advantage_weight=1.0"])


def test_a_stage_seed_reseeds_that_stage_only(tmp_path):
    from pathlib import Path

    from ntp_rl.stages.common import StageContext

    recipe = load_recipe(
        _write(
            tmp_path,
            {
                "run": {"name": "t", "seed": 5},
                "stages": [
                    {"kind": "sft", "trainer": {"max_steps": 1}},
                    {
                        "kind": "rl",
                        "seed": 9,
                        "rewards": [{"name": "math_accuracy"}],
                        "trainer": {"max_steps": 1},
                    },
                ],
            },
        )
    )

    def context(index):
        return StageContext(recipe, recipe.stages[index], index, tmp_path / "run", "tiny", Path(tmp_path))

    sft, rl = context(0), context(1)
    assert (sft.seed, rl.seed) == (5, 9)
    assert sft.trainer_args().seed == 5
    assert rl.trainer_args(num_generations=2, per_device_train_batch_size=2).seed == 9
    assert recipe.stage_data(recipe.stages[1]) == recipe.stage_data(recipe.stages[0])  # same data
