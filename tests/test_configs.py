"""Every YAML under fincompress/conf/ composes, resolves and instantiates."""

import re
import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fincompress.config_checks import EXTRA_TARGETS_VARIABLE, check_config, trusted_targets
from fincompress.distill.loss import DistillationLoss, build_loss
from fincompress.errors import InputError
from fincompress.models.sources import load_classifier, resolve_source
from fincompress.training import build_trainer, single_process

from .conftest import CONF_DIR, compose_config

CONFIG_FILES = sorted(p for p in CONF_DIR.rglob("*.yaml")
                      if not p.relative_to(CONF_DIR).as_posix().startswith("hydra/"))
LAUNCHER_FILES = sorted((CONF_DIR / "hydra" / "launcher").glob("*.yaml"))


def overrides_for(path: Path) -> list[str]:
    relative = path.relative_to(CONF_DIR)
    if relative.parent == Path("."):
        return []
    group = relative.parent.as_posix()
    if group in ("experiment", "study_method"):  # groups the root config leaves out
        return [f"+{group}={relative.stem}"]
    return [f"{group}={relative.stem}"]


def test_every_group_is_found():
    groups = {p.relative_to(CONF_DIR).parent.as_posix() for p in CONFIG_FILES}
    assert {"data", "news", "teacher", "trainer", "logger", "callbacks", "paths", "experiment"} <= groups


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory):
    """A saved 4-layer random teacher: what student configs find in ``teacher_checkpoint``."""
    folder = tmp_path_factory.mktemp("teacher") / "model"
    model, tokenizer = load_classifier(
        "bundled:minilm-l6", ["negative", "neutral", "positive"], random_init=True,
        config_overrides={"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 2,
                          "intermediate_size": 64})
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def is_hub_id(source: str) -> bool:
    """A hub id resolves to itself; loading it is the real code path but needs network."""
    return resolve_source(source) == source


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_config_composes_and_instantiates(path, tmp_path, data_dir, minilm_tokenizer,
                                          tiny_teacher_dir):
    cfg = compose_config([*overrides_for(path), f"teacher_checkpoint={tiny_teacher_dir}"],
                         tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert "experiment" not in OmegaConf.to_container(cfg)  # kept out of the defaults list
    check_config(cfg)  # every shipped value is in its range

    datamodule = instantiate(cfg.data, tokenizer=minilm_tokenizer)
    assert datamodule.tokenizer is minilm_tokenizer
    news = instantiate(cfg.news, tokenizer=minilm_tokenizer)
    assert news.sources

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = instantiate(cfg.teacher.optimizer)([parameter])
    instantiate(cfg.teacher.scheduler)(optimizer, 100).step()
    if not is_hub_id(cfg.teacher.model.source):
        model, tokenizer = instantiate(cfg.teacher.model)
        assert model.config.id2label == dict(enumerate(cfg.data.labels))

    for stage in ("stage1", "stage2"):
        instantiate(cfg.distill[stage].scheduler)(instantiate(cfg.distill[stage].optimizer)(
            [parameter]), 10)
    if "source" in cfg.student.model and is_hub_id(cfg.student.model.source):
        student = None
    else:
        student, _ = instantiate(cfg.student.model)
        assert student.config.num_labels == 3
    teacher, _ = load_classifier(str(tiny_teacher_dir), list(cfg.data.labels))
    if student is not None and student.config.num_hidden_layers <= 4:
        loss = build_loss(instantiate(cfg.method.loss), student, teacher)
        assert isinstance(loss, DistillationLoss)

    trainer = build_trainer(cfg)
    assert trainer.max_epochs >= 1


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.stem)
def test_launcher_configs_compose_onto_submitit(path):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="fincompress.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={path.stem}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher.")
    assert launcher.timeout_min > 0 and launcher.tasks_per_node >= 1
    if path.stem == "slurm":  # what a cluster user sets: partition, time, nodes, tasks, array
        assert {"partition", "nodes", "array_parallelism", "signal_delay_s"} <= set(launcher)


def test_trusted_targets_instantiate_the_projects_classes_and_refuse_others():
    """Hydra 1.4 warns at every instantiate without an execution whitelist (an error from 1.5):
    train.py and the CLI run stages inside ``trusted_targets()`` (the README's main-job test
    checks train.py's log for the warning)."""
    from hydra.errors import InstantiationException

    try:
        from hydra.utils import execution_whitelist  # noqa: F401
    except ImportError:
        pytest.skip("Hydra before 1.4 has no execution whitelist")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning inside the context
        with trusted_targets():
            bar = instantiate({"_target_": "lightning.pytorch.callbacks.TQDMProgressBar"})
            assert type(bar).__name__ == "TQDMProgressBar"
            with pytest.raises(InstantiationException, match="os.getcwd.*not in the Hydra execution"):
                instantiate({"_target_": "os.getcwd"})


def test_the_test_trainer_after_a_ddp_fit_builds_inside_the_whitelist(tmp_path):
    """After a DDP fit the stages test in a single-process Trainer whose Lightning environment
    plugin the config does not name: it must build inside ``trusted_targets()`` (it failed
    there once, in every multi-process run) and run in this process alone."""
    cfg = compose_config(["+experiment=kd", "trainer=ddp", "trainer.devices=2"], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with trusted_targets():
            trainer = build_trainer(single_process(cfg))
    assert trainer.world_size == 1 and trainer.num_devices == 1
    assert cfg.trainer.devices == 2  # the run's own config is left as it was


def test_the_user_trusts_their_own_targets_through_the_environment(monkeypatch):
    """``$FINCOMPRESS_TRUSTED_TARGETS`` adds the user's own callbacks to the whitelist (the
    config it guards cannot); other targets stay refused and a pattern trusting everything is
    refused by name."""
    from hydra.errors import InstantiationException

    try:
        from hydra.utils import execution_whitelist  # noqa: F401
    except ImportError:
        pytest.skip("Hydra before 1.4 has no execution whitelist")
    marker = {"_target_": "tests.helpers.RankMarker", "folder": "unused"}
    with trusted_targets(), pytest.raises(InstantiationException, match="tests.helpers.RankMarker"):
        instantiate(marker)
    monkeypatch.setenv(EXTRA_TARGETS_VARIABLE, " tests.helpers.* , ")
    with trusted_targets():
        assert type(instantiate(marker)).__name__ == "RankMarker"
        with pytest.raises(InstantiationException, match="os.getcwd"):
            instantiate({"_target_": "os.getcwd"})
    for bad in ("*", "tests.*.helpers", "tests/helpers"):
        monkeypatch.setenv(EXTRA_TARGETS_VARIABLE, bad)
        with pytest.raises(InputError, match=f"{EXTRA_TARGETS_VARIABLE}: '{re.escape(bad)}'"):
            trusted_targets()
