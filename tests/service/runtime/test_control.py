"""The version policy and the model control's decisions, over real folders and a loader that records what
it is asked to load (the real loading is tested through the runtime: test_hot_reload.py)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from service.config import ConfigError, ServiceConfig
from service.contract.loading import LoadingError
from service.contract.manifest import ManifestError
from service.handoff import protocol
from service.policy import Rule, VersionPolicy
from service.runtime.control import ModelControl, scan


@pytest.mark.parametrize(("text", "name", "expected"), [
    ("latest:1", "m", {"10"}),  # versions compare as numbers
    ("latest:2", "m", {"2", "10"}),
    ("all", "m", {"1", "2", "10"}),
    ("specific:1,7", "m", {"1"}),
    ("latest:1;m=all", "m", {"1", "2", "10"}),
    ("latest:1;m=all", "other", {"10"}),
    ("m=specific:2", "other", {"10"}),  # no default given: latest:1
])
def test_the_policy_selects_versions(text: str, name: str, expected: set[str]) -> None:
    assert VersionPolicy.parse(text).select(name, ["1", "2", "10"]) == expected


@pytest.mark.parametrize("text", ["latest", "latest:0", "newest:1", "specific:", "specific:a", "M=all",
                                  "../x=all", "all;m=latest"])
def test_a_bad_policy_is_a_config_error_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match="TRAINSERVE_VERSION_POLICY"):
        ServiceConfig.from_env({"TRAINSERVE_VERSION_POLICY": text})


def test_rules_print_as_they_are_written() -> None:
    assert [str(Rule.parse(t)) for t in ("latest:3", "all", "specific:10,2")] == ["latest:3", "all",
                                                                                  "specific:2,10"]


class FakeModel:
    """What the table needs of a loaded model: its key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = f"{folder.parent.name}/{folder.name}"


def artifact(root: Path, name: str, version: str, good: bool | str = True) -> Path:
    folder = root / name / version
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"good": good}))
    return folder


def replace(folder: Path, good: bool) -> None:
    """A new artifact in place of the old one: a new manifest file (new inode), as export's rename gives."""
    staging = folder.with_name(f".{folder.name}")
    staging.mkdir()
    (staging / "manifest.json").write_text(json.dumps({"good": good, "again": True}))
    os.rename(staging / "manifest.json", folder / "manifest.json")
    staging.rmdir()


def control(root: Path, policy: str = "latest:1", mode: str = "poll") -> tuple[ModelControl, list[str]]:
    asked: list[str] = []

    def load(folder: Path) -> FakeModel:
        asked.append(f"{folder.parent.name}/{folder.name}")
        good = json.loads((folder / "manifest.json").read_text())["good"]
        if good == "zip":  # what torch's loaders raise for a cut file whose checksum matches
            raise zipfile.BadZipFile("File is not a zip file")
        if not good:
            raise ManifestError(f"{folder}: model.pt sha256 does not match the manifest")
        return FakeModel(folder)

    return ModelControl(root, mode, VersionPolicy.parse(policy), load), asked


def keys(models) -> list[str]:
    return sorted(m.key for m in models)


def test_start_up_loads_what_the_policy_selects_and_falls_back_past_a_refused_version(tmp_path: Path) -> None:
    for version in ("1", "2"):
        artifact(tmp_path, "m", version)
    artifact(tmp_path, "m", "3", good=False)
    ctl, asked = control(tmp_path)
    models, refused = ctl.start_up()
    assert keys(models) == ["m/2"]
    assert asked == ["m/3", "m/2"]
    assert list(refused) == [str(tmp_path / "m" / "3")] and "sha256" in refused[str(tmp_path / "m" / "3")]


def test_start_up_with_nothing_loadable_is_an_error_that_says_why(tmp_path: Path) -> None:
    artifact(tmp_path, "m", "1", good=False)
    with pytest.raises(LoadingError, match="sha256"):
        control(tmp_path)[0].start_up()
    with pytest.raises(LoadingError, match="not a folder"):
        control(tmp_path / "missing")[0].start_up()


def test_a_new_version_is_added_before_the_old_one_is_retired(tmp_path: Path) -> None:
    artifact(tmp_path, "m", "1")
    ctl, asked = control(tmp_path)
    ctl.start_up()
    assert not ctl.reconcile(None)  # nothing changed: nothing to tell the loop
    artifact(tmp_path, "m", "2")
    change = ctl.reconcile(None)
    assert (keys(change.added), change.retired) == (["m/2"], ["m/1"])
    assert asked == ["m/1", "m/2"]


def test_a_refused_version_is_tried_once_and_the_served_one_stays(tmp_path: Path) -> None:
    artifact(tmp_path, "m", "1")
    ctl, asked = control(tmp_path)
    ctl.start_up()
    bad = artifact(tmp_path, "m", "2", good=False)
    change = ctl.reconcile(None)
    assert (change.added, change.retired, list(change.refused)) == ([], [], [str(bad)])
    assert not ctl.reconcile(None)  # the same files: not tried again
    replace(bad, good=True)  # a fixed artifact in its place is tried again
    change = ctl.reconcile(None)
    assert (keys(change.added), change.retired, change.refused) == (["m/2"], ["m/1"], {})
    assert asked == ["m/1", "m/2", "m/2"]


def test_a_replaced_artifact_that_fails_leaves_the_loaded_one_serving(tmp_path: Path) -> None:
    folder = artifact(tmp_path, "m", "1")
    ctl, _ = control(tmp_path)
    ctl.start_up()
    replace(folder, good=False)
    change = ctl.reconcile(None)
    assert (change.added, change.retired, list(change.refused)) == ([], [], [str(folder)])
    replace(folder, good=True)
    change = ctl.reconcile(None)
    assert (keys(change.added), change.retired) == (["m/1"], [])  # the table retires the old index itself


def test_an_artifact_still_being_exported_is_not_seen(tmp_path: Path) -> None:
    artifact(tmp_path, "m", "1")
    ctl, asked = control(tmp_path, policy="all")
    ctl.start_up()
    artifact(tmp_path, "m", ".2-k3j9", good=False)  # export's staging folder, manifest written last
    assert not ctl.reconcile(None)
    assert asked == ["m/1"]


def test_a_removed_version_is_retired_and_the_policy_falls_back(tmp_path: Path) -> None:
    artifact(tmp_path, "m", "1")
    two = artifact(tmp_path, "m", "2")
    ctl, _ = control(tmp_path)
    ctl.start_up()
    (two / "manifest.json").unlink()
    change = ctl.reconcile(None)
    assert (keys(change.added), change.retired) == (["m/1"], ["m/2"])


def test_explicit_mode_changes_only_on_load_and_unload(tmp_path: Path) -> None:
    artifact(tmp_path, "m", "1")
    ctl, _ = control(tmp_path, mode="explicit")
    ctl.start_up()
    assert ctl.command(object(), protocol.LOAD, "m") is None  # queued for the thread
    artifact(tmp_path, "m", "2")
    assert ctl.wanted == {"m"}
    change = ctl._handle(protocol.UNLOAD, "m")
    assert (change.added, change.retired) == ([], ["m/1"])
    assert ctl._outcome(protocol.UNLOAD, "m")[0] == protocol.OK
    change = ctl._handle(protocol.LOAD, "m")
    assert keys(change.added) == ["m/2"]
    assert ctl._outcome(protocol.LOAD, "m") == (protocol.OK, "serving m version(s) 2")


def test_load_and_unload_are_refused_unless_model_control_is_explicit(tmp_path: Path) -> None:
    artifact(tmp_path, "m", "1")
    for mode in ("poll", "none"):
        ctl, _ = control(tmp_path, mode=mode)
        ctl.start_up()
        assert "TRAINSERVE_MODEL_CONTROL=explicit" in ctl.command(object(), protocol.LOAD, "m")


def test_whatever_loading_raises_refuses_that_version_alone(tmp_path: Path) -> None:
    artifact(tmp_path, "m", "1")
    cut = artifact(tmp_path, "m", "2", good="zip")
    ctl, _ = control(tmp_path)
    models, refused = ctl.start_up()  # a valid version beside it: start-up serves that one
    assert keys(models) == ["m/1"] and refused == {str(cut): "BadZipFile: File is not a zip file"}
    artifact(tmp_path, "m", "3", good="zip")
    artifact(tmp_path, "zz", "1")  # a valid model after the broken ones in the scan
    change = ctl.reconcile(None)
    assert keys(change.added) == ["zz/1"] and len(change.refused) == 2


def _crashed_while_loading(ctl: ModelControl, folder: Path) -> None:
    """What a runtime that died while loading ``folder`` leaves behind: its loading marker."""
    name, version = folder.parent.name, folder.name
    fingerprint = scan(folder.parents[1])[name][version][1]
    ctl.loading_marker.write_text(json.dumps({"folder": str(folder), "fingerprint": fingerprint}))


def test_a_crash_while_loading_refuses_that_artifact_in_every_later_runtime(tmp_path: Path) -> None:
    models = tmp_path / "models"
    artifact(models, "m", "1")
    crashing = artifact(models, "m", "2")

    def runtime() -> ModelControl:
        ctl, _ = control(models)
        ctl.loading_marker, ctl.crash_record = tmp_path / "runtime-0.sock.loading", tmp_path / "crashed.jsonl"
        return ctl

    killed = runtime()  # killed from outside (SIGKILL) while loading: the artifact is not to blame
    _crashed_while_loading(killed, crashing)
    assert keys(killed.start_up(crashed=None)[0]) == ["m/2"]
    crashed = runtime()
    _crashed_while_loading(crashed, crashing)
    served, refused = crashed.start_up(crashed="SIGSEGV")
    assert keys(served) == ["m/1"]
    assert refused == {str(crashing): "a model runtime died of SIGSEGV while loading it"}
    assert not crashed.loading_marker.exists()
    later = runtime()  # any later runtime of the service, crash or not
    assert keys(later.start_up()[0]) == ["m/1"]
    replace(crashing, good=True)  # a new artifact in its place is tried again
    assert keys(later.reconcile(None).added) == ["m/2"]
