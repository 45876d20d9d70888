import pytest

from colossal_hammer.serve.__main__ import ServeConfig, make_app
from tests.conftest import save_tiny_llama
from tests.serve.live import LiveServer

API_KEY = "test-key"


@pytest.fixture(scope="session")
def served_model(tokenizer_dir, tmp_path_factory):
    """A tiny random Llama with a real tokenizer and no chat template (the server uses the Llama-2 one)."""
    return save_tiny_llama(tokenizer_dir, str(tmp_path_factory.mktemp("serve") / "tiny-chat"), hidden=64, layers=2)


@pytest.fixture(scope="session")
def live(served_model):
    config = ServeConfig(model=served_model, served_model_name="tiny-chat", api_key=API_KEY,
                         max_request_bytes=64 * 1024, max_batch_size=16)
    app = make_app(config)
    with LiveServer(app) as server:
        server.app = app
        yield server


@pytest.fixture
def client(live):
    import openai

    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
