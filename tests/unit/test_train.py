"""The trainer in-process on tiny phantoms: metrics, checkpoints, exact resume, config handling."""

from __future__ import annotations

import json
import os

import pytest
import torch

from cxr_core.checkpoint import load_checkpoint, read_metadata
from cxr_core.runs import RunDir
from cxr_core.train.config import ConfigError, TrainConfig, load_config, read_run_config, write_run_config
from cxr_core.train.runner import run_training
from cxr_core.train.trainer import Trainer

EPOCH_KEYS = {"epoch", "train_loss", "val_loss", "val_auc_macro", "val_auc", "val_ap"}


def _config(root, **changes) -> TrainConfig:
    base = TrainConfig(data=str(root), model="tiny_resnet", image_size=48, epochs=2, batch_size=16, lr=3e-3,
                       workers=0, seed=7)
    return base.replace(**changes)


def _run(tmp_path, config, name="run") -> RunDir:
    run = RunDir.create(tmp_path / "runs", name)
    write_run_config(run, config)
    return run


@pytest.mark.slow
def test_fit_writes_metrics_status_and_self_describing_checkpoints(tmp_path, phantom_set):
    run = _run(tmp_path, _config(phantom_set, loss="bce-posweight", sampler="oversample", mixup=0.2))
    assert run_training(run) == "finished"
    epochs = [r for r in run.read_metrics() if r.get("type") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert EPOCH_KEYS <= epochs[0].keys()
    assert set(epochs[0]["val_auc"]) == {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Mass",
                                         "Nodule", "Pneumothorax"}
    status = run.read_status()
    assert status.state == "finished" and status["epoch"] == 2 and status["best_epoch"] in (1, 2)
    meta = read_metadata(run.best_checkpoint)
    config = meta["model_config"]
    assert config["name"] == "tiny_resnet" and config["input_size"] == 48 and len(config["labels"]) == 8
    assert len(config["mean"]) == config["in_chans"] and meta["train_config"]["loss"] == "bce-posweight"
    last = load_checkpoint(run.last_checkpoint, train_state=True)
    assert last.epoch == 2 and "optimizer" in last.train_state
    with pytest.raises(Exception, match="weights only"):
        load_checkpoint(run.best_checkpoint, train_state=True)
    assert json.loads((run.path / "split.json").read_text())["train"]


@pytest.mark.slow
def test_stop_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, phantom_set):
    config = _config(phantom_set, epochs=2)
    straight = _run(tmp_path, config, "straight")
    Trainer(config, straight).fit()

    class StopAt:
        def on_train_batch_end(self, trainer, step, loss):
            if trainer.epoch == 1 and step == 2:
                trainer.stop_event.set()

    broken = _run(tmp_path, config, "broken")
    assert Trainer(config, broken, callbacks=[StopAt()]).fit() == "stopped"
    assert broken.read_status().state == "stopped"
    state = load_checkpoint(broken.last_checkpoint, train_state=True).train_state
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    assert Trainer(config, broken).fit(resume=True) == "finished"
    a = load_checkpoint(straight.last_checkpoint).weights
    b = load_checkpoint(broken.last_checkpoint).weights
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    assert [r["epoch"] for r in broken.read_metrics() if r.get("type") == "epoch"] == [1, 2]


@pytest.mark.slow
def test_a_resumed_run_keeps_the_batch_size_it_chose(tmp_path, phantom_set, monkeypatch):
    # The chosen batch size depends on the data's size (and the device): a resume that chose again could skip the
    # wrong number of images and put the schedule out of step.
    from cxr_core.train import trainer as trainer_module

    config = _config(phantom_set, epochs=2, batch_size=None)
    run = _run(tmp_path, config)

    class StopAt:
        def on_train_batch_end(self, trainer, step, loss):
            if trainer.epoch == 0 and step == 2:
                trainer.stop_event.set()

    monkeypatch.setattr(trainer_module, "default_batch_size", lambda *args: 16)
    assert Trainer(config, run, callbacks=[StopAt()]).fit() == "stopped"
    assert read_metadata(run.last_checkpoint)["train_config"]["batch_size"] == 16  # as chosen, recorded
    monkeypatch.setattr(trainer_module, "default_batch_size", lambda *args: 8)  # it would choose otherwise now
    resumed = Trainer(config, run)
    assert resumed.fit(resume=True) == "finished" and resumed.batch_size == 16


def test_config_file_options_override_and_errors(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('[train]\ndata = "/data"\nmodel = "resnet18"\nepochs = 30\n')
    config = load_config(path).replace(epochs=5, lr=None)
    assert (config.model, config.epochs, config.lr) == ("resnet18", 5, None)
    assert config.resolve().lr == 2e-3 and config.replace(pretrained=True).resolve().lr == 3e-4
    path.write_text('epochs = 3\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(path)
    path.write_text('epochs = [\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig(data="x", loss="hinge").validate()


def test_config_mistakes_found_before_a_run_exists(tmp_path, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe\x00")  # not text: one line, not a UnicodeDecodeError
    with pytest.raises(ConfigError, match="bad.toml: not a TOML file"):
        load_config(path)
    path.write_text('findings = ["Effusion"]\n')  # the option's name, not the setting's
    with pytest.raises(ConfigError, match="--findings is `labels`"):
        load_config(path)
    with pytest.raises(ConfigError, match="from 1 to 100,000"):
        TrainConfig(data="x", epochs=10**20).validate()
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        TrainConfig(data="x", device="gpu").validate()
    with pytest.raises(ConfigError, match="gpus = 'abc': GPU numbers separated by commas"):  # trained on the CPU
        TrainConfig(data="x", gpus="abc").validate()
    TrainConfig(data="x", gpus="0, 1").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="cuda:7: no CUDA GPU is visible"):  # was a torch traceback in the job
        TrainConfig(data="x", device="cuda:7").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="has 2 CUDA GPUs"):
        TrainConfig(data="x", device="cuda:7").validate()
    TrainConfig(data="x", device="cuda:1").validate()


def test_a_root_that_is_not_utf8_survives_the_run_config(tmp_path):
    root = os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9sum\xe9")  # a Latin-1 folder name
    run = RunDir.create(tmp_path / "runs")
    write_run_config(run, TrainConfig(data=root, weights=os.fsdecode(b"/w/\xff.pt")))
    back = read_run_config(run)
    assert (back.data, back.weights) == (root, os.fsdecode(b"/w/\xff.pt"))
    assert run.config_path.read_text(encoding="utf-8").count("\\\\xe9") == 2  # TOML holds text: escapes


@pytest.mark.slow
def test_labels_subset_and_unknown_label(tmp_path, phantom_set):
    run = _run(tmp_path, _config(phantom_set, epochs=1, labels=["Cardiomegaly", "effusion"]))
    run_training(run)
    assert read_metadata(run.last_checkpoint)["model_config"]["labels"] == ["Cardiomegaly", "Effusion"]
    bad = _run(tmp_path, _config(phantom_set, epochs=1, labels=["Tuberculosis"]), "bad")
    with pytest.raises(ConfigError, match="Tuberculosis"):
        run_training(bad)
    assert bad.read_status().state == "failed" and "Tuberculosis" in bad.read_status()["error"]


@pytest.mark.slow
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_says_why(tmp_path, phantom_set, monkeypatch):
    import errno

    from cxr_core import checkpoint as ckpt_module
    from cxr_core.train import trainer as trainer_module

    run = _run(tmp_path, _config(phantom_set, epochs=3))
    real_save = ckpt_module.save_file
    calls = {"n": 0}

    def save_file(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 wrote last + best; the disk is full from epoch 2 on
            with open(path, "wb") as fh:
                fh.write(b"\0" * 1000)  # half a file in the temporary path, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt_module, "save_file", save_file)
    assert trainer_module.save_checkpoint is ckpt_module.save_checkpoint
    with pytest.raises(OSError):
        run_training(run)
    status = run.read_status()
    assert status.state == "failed" and "No space left on device" in status["error"]
    kept = load_checkpoint(run.last_checkpoint, train_state=True)  # the epoch-1 checkpoint, whole
    assert kept.epoch == 1
    assert not [p for p in run.checkpoints.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize(("options", "words"), [
    (["--lr", "inf"], "lr = inf: a finite number > 0"),
    (["--workers", "-3"], "workers = -3: a whole number >= 0"),
    (["--mixup", "inf"], "mixup = inf: a finite number >= 0"),
    (["--grad-clip", "nan"], "grad_clip = nan: a finite number >= 0"),
    (["--subset", "0"], "subset = 0: a whole number of images >= 1"),
])
def test_out_of_range_options_are_one_line_naming_the_setting(tmp_path, options, words):
    from tests.cli import cxr

    out = cxr("train", "--data", tmp_path, "--model", "tiny_resnet", "--runs-dir", tmp_path / "runs", *options)
    assert out.returncode == 1 and words in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("toml", "words"), [
    ('epochs = "5"', "epochs = '5': expected a whole number"),
    ("image_size = 64.5", "image_size = 64.5: expected a whole number"),
    ('model = ["resnet18"]', "model = ['resnet18']: expected text"),
    ("batch_size = true", "batch_size = True: expected a whole number"),
])
def test_toml_values_of_the_wrong_type_are_one_line(tmp_path, toml, words):
    path = tmp_path / "run.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match="run.toml") as caught:
        load_config(path)
    assert words in str(caught.value)


def test_a_list_setting_given_as_one_string_is_not_split_into_letters(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('labels = "Effusion"\nepochs_grid = "30, 50"\nlr = 1\n')
    config = load_config(path)
    assert config.labels == ["Effusion"] and config.epochs_grid == [30, 50] and config.lr == 1.0


@pytest.mark.slow
def test_resume_after_the_data_changed_starts_the_epoch_again(tmp_path, phantom_set):
    """150 of 400 images deleted under a stopped run used to fail every resume (sampler state n mismatch)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(phantom_set, root)
    config = _config(root, epochs=2)

    class StopAt:
        def on_train_batch_end(self, trainer, step, loss):
            if trainer.epoch == 1 and step == 2:
                trainer.stop_event.set()

    run = _run(tmp_path, config)
    assert Trainer(config, run, callbacks=[StopAt()]).fit() == "stopped"
    images = sorted((root / "images").glob("*.png"))
    for path in images[: len(images) // 3]:
        path.unlink()
    assert run_training(run, resume=True) == "finished"
    assert run.read_status().state == "finished"
    assert [r["epoch"] for r in run.read_metrics() if r.get("type") == "epoch"] == [1, 2]
    assert "the training data changed since the checkpoint" in run.log_path.read_text()


def test_studies_in_splits_training_does_not_know_are_named(tmp_path, phantom_set):
    import csv
    import shutil

    root = tmp_path / "data"
    shutil.copytree(phantom_set, root)
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["split"] = ("train", "val", "holdout2")[i % 3] if i % 3 != 2 or i < 30 else "holdout2"
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from cxr_core.train.data import prepare_data

    data = prepare_data(_config(root))
    n = sum(r["split"] == "holdout2" for r in rows)
    assert f"{n} studies not used, their split is not train, val or test: holdout2 ({n})" in data.split_note


def test_batch_size_is_chosen_by_device_model_and_size_unless_given():
    from cxr_core.train.trainer import CPU_BATCH, default_batch_size

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert default_batch_size("efficientnet_b0", 224, cpu) == CPU_BATCH
    assert default_batch_size("efficientnet_b0", 224, cuda) == 256
    assert default_batch_size("densenet121", 224, cuda) == 128
    assert default_batch_size("efficientnet_b0", 448, cuda) == 64  # a quarter of the pixels per image
    assert default_batch_size("efficientnet_b0", 64, cuda) == 512  # capped
    assert default_batch_size("xrv_resnet50_all", 512, cuda) % 8 == 0
    # a small data set on a GPU: at least 50 steps an epoch (1,600 images at 256 was 6 steps: it did not learn)
    assert default_batch_size("efficientnet_b0", 224, cuda, train_images=1600) == 32
    assert default_batch_size("efficientnet_b0", 224, cuda, train_images=8000) == 160
    assert default_batch_size("efficientnet_b0", 224, cuda, train_images=86_524) == 256  # NIH: the table's
    assert default_batch_size("efficientnet_b0", 224, cpu, train_images=400) == CPU_BATCH  # a CPU: unchanged


@pytest.mark.slow
def test_a_non_finite_loss_stops_training_naming_the_step_it_first_happened(tmp_path, phantom_set, monkeypatch):
    """The loss is read once per logged step, not every step; the failure still names the exact step."""
    from cxr_core.train import trainer as trainer_module

    real = trainer_module.Trainer._train_step

    def poisoned(self, batch, step):
        loss = real(self, batch, step)
        return loss * float("nan") if (self.epoch, step) == (1, 2) else loss

    monkeypatch.setattr(trainer_module.Trainer, "_train_step", poisoned)
    run = _run(tmp_path, _config(phantom_set, epochs=3))
    with pytest.raises(trainer_module.TrainingFailed, match="at epoch 2, step 2"):
        run_training(run)
    assert run.read_status().state == "failed"
    assert [r["epoch"] for r in run.read_metrics() if r.get("type") == "epoch"] == [1]  # epoch 1 kept


@pytest.mark.slow
def test_loader_workers_persist_across_epochs_and_epochs_report_their_own_figures(tmp_path, phantom_set):
    import dataclasses

    run = _run(tmp_path, dataclasses.replace(_config(phantom_set, epochs=2, workers=2), batch_size=None))
    assert run_training(run) == "finished"
    epochs = [r for r in run.read_metrics() if r.get("type") == "epoch"]
    assert [r["batch_size"] for r in epochs] == [32, 32]  # chosen for the CPU
    assert all(r["images_per_s"] > 0 and r["val_s"] >= 0 for r in epochs)
