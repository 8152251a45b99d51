"""The Piccolo app that owns agentctl's tables and the migrations kept in the top-level migrations/ folder."""

from piccolo.conf.apps import AppConfig

from agentctl.resources import migrations_dir
from server.apikeys.tables import ApiKey
from server.auth.tables import RefreshToken, RevokedToken
from server.budgets.tables import UserUsage
from server.chat.tables import ChatRunEvents, ChatTurn
from server.evaluation.tables import EvalPairwise, EvalReplayAnswer, EvalRun, EvalScore
from server.memory.tables import MemoryErasure
from server.sessions.tables import ChatSession
from server.users.tables import User

APP_NAME = "agentctl"

APP_CONFIG = AppConfig(
    app_name=APP_NAME,
    migrations_folder_path=str(migrations_dir()),
    table_classes=[
        User,
        ChatSession,
        RefreshToken,
        RevokedToken,
        ApiKey,
        ChatTurn,
        ChatRunEvents,
        EvalRun,
        EvalScore,
        EvalReplayAnswer,
        EvalPairwise,
        MemoryErasure,
        UserUsage,
    ],
    migration_dependencies=[],
    commands=[],
)
