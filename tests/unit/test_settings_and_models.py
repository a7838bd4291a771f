import pytest
from pydantic import ValidationError

from api.settings import ApiSettings
from shared.errors import ModelWeightsUnavailable
from shared.models import resnet50
from shared.models.registry import MODELS, get_model_spec
from worker.settings import WorkerSettings


def test_production_refuses_redis_without_password() -> None:
    with pytest.raises(ValidationError, match="password"):
        ApiSettings(environment="production", redis_url="redis://redis:6379/0")
    with pytest.raises(ValidationError, match="API_KEYS"):
        ApiSettings(environment="production", redis_url="redis://:s3cret@redis:6379/0")
    key = {"name": "ops", "sha256": "a" * 64, "collections": ["*"]}
    ok = ApiSettings(environment="production", redis_url="redis://:s3cret@redis:6379/0", api_keys=[key])
    assert ok.environment == "production" and ok.api_keys[0].may_use("anything")


def test_worker_defaults_are_real_weights_never_random(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EMBEDDING_MODEL", "EMBEDDING_WEIGHTS", "INPUT_SIZE"):
        monkeypatch.delenv(var, raising=False)
    settings = WorkerSettings()
    assert settings.embedding_model == "resnet50"
    assert settings.embedding_weights == "imagenet"
    assert settings.model_input_size == 224
    monkeypatch.setenv("INPUT_SIZE", "512")
    assert WorkerSettings().model_input_size == 512


def test_unknown_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDING_MODEL", "vgg16")
    with pytest.raises(ValidationError, match="unknown EMBEDDING_MODEL"):
        WorkerSettings()
    with pytest.raises(ValueError, match="resnet50"):
        get_model_spec("vgg16")


def test_registry_never_imports_tensorflow() -> None:
    import subprocess
    import sys

    code = "import api.main, shared.models.registry, worker.tasks, sys; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert MODELS["resnet50"].dim == 2048


def test_missing_imagenet_weights_say_how_to_provide_them(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(target):
        raise OSError("network unreachable")

    monkeypatch.setattr(resnet50, "_download", offline)
    with pytest.raises(ModelWeightsUnavailable) as info:
        resnet50.resolve_weights("imagenet")
    message = info.value.detail
    for hint in ("EMBEDDING_WEIGHTS=random", "EMBEDDING_WEIGHTS=/path", str(tmp_path), resnet50.NOTOP_MD5):
        assert hint in message
    with pytest.raises(ModelWeightsUnavailable, match="neither"):
        resnet50.resolve_weights(str(tmp_path / "nope.h5"))


def test_cached_or_explicit_weights_are_used_without_download(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "models" / resnet50.NOTOP_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"weights")
    monkeypatch.setattr(resnet50, "_download", lambda target: pytest.fail("must not download"))
    assert resnet50.resolve_weights("imagenet") == cached
    assert resnet50.resolve_weights(str(cached)) == cached
    assert resnet50.resolve_weights("random") is None


def test_key_scopes_and_hashing() -> None:
    from api.auth import ApiKey, hash_key

    key = ApiKey(name="alice", sha256=hash_key("secret"), collections=["alice-*", "shared"])
    assert key.may_use("alice-photos") and key.may_use("shared")
    assert not key.may_use("bob-photos") and not key.may_use("shared-2")
    assert hash_key("secret") != hash_key("secret ") and len(hash_key("x")) == 64
