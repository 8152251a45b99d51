from tests.chat.conftest import _healthy_simulator, simulator  # noqa: F401  (the chat tests' simulator)
