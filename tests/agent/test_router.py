"""agent.router: the offline intent router, as a table of phrasings."""

from __future__ import annotations

import pytest
from agent.router import AGENT_NAMES, Intent, IntentKind, project_name_for, route
from hypothesis import given, settings
from hypothesis import strategies as st

K = IntentKind

# (message, expected kind, expected agents for RUN_TASK or None to skip the check)
CASES: list[tuple[str, IntentKind, tuple[str, ...] | None]] = [
    # Greetings and small talk
    ("hi", K.GREETING, None),
    ("Hello!", K.GREETING, None),
    ("hey there 👋", K.GREETING, None),
    ("Good morning", K.GREETING, None),
    ("thanks!", K.GREETING, None),
    # Help and agents
    ("help", K.HELP, None),
    ("Help me", K.HELP, None),
    ("What can you do?", K.HELP, None),
    ("how does this work", K.HELP, None),
    ("hi! what can you do?", K.HELP, None),
    ("/help", K.HELP, None),
    ("what agents are there?", K.AGENTS, None),
    ("which agents do you have", K.AGENTS, None),
    ("/agents", K.AGENTS, None),
    # What came out of the work
    ("what did you make?", K.RESULT, None),
    ("What have you built", K.RESULT, None),
    ("what's the result", K.RESULT, None),
    ("how did it go?", K.RESULT, None),
    # Projects
    ("list my projects", K.LIST_PROJECTS, None),
    ("show projects", K.LIST_PROJECTS, None),
    ("What projects do I have?", K.LIST_PROJECTS, None),
    ("Can I see my projects please", K.LIST_PROJECTS, None),
    ("projects", K.LIST_PROJECTS, None),
    ("/list", K.LIST_PROJECTS, None),
    ("create a project called shop", K.CREATE_PROJECT, None),
    ("new project shop: an online store", K.CREATE_PROJECT, None),
    ("start a project named todo-api for a todo REST API", K.CREATE_PROJECT, None),
    ("I'd like to create a new project", K.CREATE_PROJECT, None),
    ("Could you please set up a new django project called blog 🙏", K.CREATE_PROJECT, None),
    # Coding tasks and agent hints
    ("build a REST API with user authentication", K.RUN_TASK, ("developer",)),
    ("write tests for the auth module", K.RUN_TASK, ("tester",)),
    ("Write unit tests for the authentication module", K.RUN_TASK, ("tester",)),
    ("create a docker configuration for deployment", K.RUN_TASK, ("devops",)),
    ("create a docker config", K.RUN_TASK, ("devops",)),
    ("design a schema for e-commerce data", K.RUN_TASK, ("database",)),
    ("design a modern dashboard interface", K.RUN_TASK, ("uiux",)),
    ("generate the backend API code", K.RUN_TASK, ("developer",)),
    ("add a login page", K.RUN_TASK, ("uiux",)),
    ("make a project plan", K.RUN_TASK, ("planner",)),
    ("set up a CI/CD pipeline on kubernetes", K.RUN_TASK, ("devops",)),
    ("Can you build an API and write tests for it?", K.RUN_TASK, ("developer", "tester")),
    ("add tests to the project", K.RUN_TASK, ("tester",)),
    ("create tests for my project", K.RUN_TASK, ("tester",)),
    ("I need a login page", K.RUN_TASK, ("uiux",)),
    ("give me code for a todo app", K.RUN_TASK, ("developer",)),
    ("update the status page", K.RUN_TASK, ("uiux",)),
    ("create a web application with user authentication", K.RUN_TASK, ("developer",)),
    ("/task build a chat server", K.RUN_TASK, ("developer",)),
    # Status
    ("status", K.STATUS, None),
    ("Status?", K.STATUS, None),
    ("how is it going", K.STATUS, None),
    ("what's the progress", K.STATUS, None),
    ("whats the status of my build", K.STATUS, None),
    ("is it done yet?", K.STATUS, None),
    ("any updates?", K.STATUS, None),
    # Files
    ("show me the files", K.FILES, None),
    ("download the code", K.FILES, None),
    ("send the files", K.FILES, None),
    ("can I get the generated files", K.FILES, None),
    ("give me the code", K.FILES, None),
    # Unknown
    ("asdf qwerty zxcv", K.UNKNOWN, None),
    ("the weather is nice today", K.UNKNOWN, None),
    ("42", K.UNKNOWN, None),
    ("🤷‍♂️🤷‍♂️", K.UNKNOWN, None),
    ("", K.UNKNOWN, None),
    ("   ?!  ", K.UNKNOWN, None),
    ("/frobnicate", K.UNKNOWN, None),
    ("what is docker?", K.UNKNOWN, None),
]


@pytest.mark.parametrize(("message", "kind", "agents"), CASES, ids=[c[0] or "<empty>" for c in CASES])
def test_route_kind(message: str, kind: IntentKind, agents: tuple[str, ...] | None) -> None:
    intent = route(message)
    assert intent.kind is kind, intent
    if agents is not None:
        assert intent.agents == agents


@pytest.mark.parametrize(
    ("message", "name", "description"),
    [
        ("create a project called shop", "shop", None),
        ("new project shop: an online store", "shop", "an online store"),
        ("start a project named todo-api for a todo REST API", "todo-api", "a todo REST API"),
        ("Create a project called “My Shop”", "My Shop", None),
        ("create a project for an online store", None, "an online store"),
        ("create a new project", None, None),
        ("/new blog - a personal blog", "blog", "a personal blog"),
        ("please create project inventory that tracks stock levels", "inventory", "that tracks stock levels"),
        ("create a project called blog which is a personal blog", "blog", "a personal blog"),
    ],
)
def test_create_project_fields(message: str, name: str | None, description: str | None) -> None:
    assert route(message) == Intent(IntentKind.CREATE_PROJECT, name=name, description=description)


@pytest.mark.parametrize(
    ("message", "kind", "ref"),
    [
        ("status of sess_abc123", K.STATUS, "sess_abc123"),
        ("what's the status of SESS_ABC123?", K.STATUS, "sess_abc123"),
        ("sess_deadbeef", K.STATUS, "sess_deadbeef"),
        ("/status sess_0f", K.STATUS, "sess_0f"),
        ("send the files for sess_42ab", K.FILES, "sess_42ab"),
        ("show me the files", K.FILES, None),
        ("status", K.STATUS, None),
    ],
)
def test_session_ref(message: str, kind: IntentKind, ref: str | None) -> None:
    intent = route(message)
    assert (intent.kind, intent.session_ref) == (kind, ref)


def test_task_keeps_case_and_drops_politeness() -> None:
    intent = route("Could you please build a REST API with OAuth? 🙏")
    assert intent.kind is K.RUN_TASK
    assert intent.task == "build a REST API with OAuth"
    assert intent.agents == ("developer",)


def test_agent_hints_are_known_agents_in_pipeline_order() -> None:
    intent = route("plan, implement, test, style, migrate the database and deploy with docker")
    assert intent.agents == AGENT_NAMES


def test_intent_is_frozen() -> None:
    intent = route("hi")
    with pytest.raises(AttributeError):
        intent.kind = K.HELP  # type: ignore[misc]
    assert K.RUN_TASK == "run_task"  # StrEnum: serialises as its value


@settings(max_examples=200, deadline=None)
@given(message=st.text(max_size=300))
def test_route_is_total(message: str) -> None:
    intent = route(message)
    assert isinstance(intent.kind, IntentKind)
    assert set(intent.agents) <= set(AGENT_NAMES)
    assert (intent.task is not None) == (intent.kind is IntentKind.RUN_TASK)


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ((), None),
        (("developer",), ["planner", "developer", "tester"]),
        (("tester",), ["planner", "tester"]),
        (("devops",), ["planner", "devops"]),
        (("database", "uiux"), ["planner", "uiux", "database"]),
    ],
)
def test_router_hints_add_experts_to_a_team(hints: tuple[str, ...], expected: list[str] | None) -> None:
    from agent.offline import team

    assert team(hints) == expected


@pytest.mark.parametrize(
    ("request_text", "name"),
    [
        ("build me a todo app with a database", "todo-app"),
        ("Create a Flask service that greets people", "flask-service"),
        ("I need a login page for my shop", "login-page"),
        ("please make a simple blog", "blog"),
        ("Build an inventory management system using Django", "inventory-management-system"),
        ("🚀🚀", "project"),
    ],
)
def test_a_project_is_named_after_the_request(request_text: str, name: str) -> None:
    assert project_name_for(request_text) == name


# The seed's multi-language list: the same intents asked in Spanish and Portuguese (the
# replies stay in English; the LLM, when configured, answers in the user's language).
MULTILINGUAL: list[tuple[str, IntentKind, tuple[str, ...] | None]] = [
    # Spanish
    ("hola", K.GREETING, None),
    ("¡Muchas gracias!", K.GREETING, None),
    ("ayuda", K.HELP, None),
    ("¿Qué puedes hacer?", K.HELP, None),
    ("¿qué agentes hay?", K.AGENTS, None),
    ("lista mis proyectos", K.LIST_PROJECTS, None),
    ("hola, muéstrame mis proyectos por favor", K.LIST_PROJECTS, None),
    ("¿cuántos proyectos tengo?", K.LIST_PROJECTS, None),
    ("crea un proyecto tienda", K.CREATE_PROJECT, None),
    ("nuevo proyecto blog", K.CREATE_PROJECT, None),
    ("¿cómo va?", K.STATUS, None),
    ("estado", K.STATUS, None),
    ("¿ya está listo?", K.STATUS, None),
    ("muéstrame los archivos", K.FILES, None),
    ("¿qué hiciste?", K.RESULT, None),
    ("construye una API REST con base de datos y pruebas", K.RUN_TASK, ("developer", "tester", "database")),
    ("quiero una página de inicio de sesión", K.RUN_TASK, ("uiux",)),
    ("despliega la app con docker", K.RUN_TASK, ("developer", "devops")),
    # Portuguese
    ("olá", K.GREETING, None),
    ("obrigado!", K.GREETING, None),
    ("ajuda", K.HELP, None),
    ("o que você pode fazer?", K.HELP, None),
    ("quais agentes existem?", K.AGENTS, None),
    ("quais são os meus projetos?", K.LIST_PROJECTS, None),
    ("listar projetos", K.LIST_PROJECTS, None),
    ("cria um projeto loja", K.CREATE_PROJECT, None),
    ("novo projeto receitas", K.CREATE_PROJECT, None),
    ("como vai?", K.STATUS, None),
    ("já terminou?", K.STATUS, None),
    ("mostra os arquivos", K.FILES, None),
    ("cria uma API de tarefas com testes", K.RUN_TASK, ("developer", "tester")),
    ("preciso de um painel de vendas", K.RUN_TASK, ("uiux",)),
    ("você pode criar um banco de dados para a loja?", K.RUN_TASK, ("database",)),
]


@pytest.mark.parametrize(("message", "kind", "agents"), MULTILINGUAL, ids=[c[0] for c in MULTILINGUAL])
def test_spanish_and_portuguese_intents(
    message: str, kind: IntentKind, agents: tuple[str, ...] | None
) -> None:
    intent = route(message)
    assert intent.kind is kind
    if agents is not None:
        assert intent.agents == agents


@pytest.mark.parametrize(
    ("message", "name", "description"),
    [
        ("crea un proyecto tienda", "tienda", None),
        ("Crea un proyecto llamado Tienda: una tienda de café", "Tienda", "una tienda de café"),
        ("crea un proyecto nuevo llamado diseño para una web", "diseño", "una web"),
        ("por favor, crea un proyecto para una tienda online", None, "una tienda online"),
        ("cria um projeto chamado loja: uma loja online", "loja", "uma loja online"),
        ("criar projeto 'Minha Loja' que seja uma loja de roupas", "Minha Loja", "uma loja de roupas"),
    ],
)
def test_spanish_and_portuguese_project_names_keep_their_accents(
    message: str, name: str | None, description: str | None
) -> None:
    assert route(message) == Intent(K.CREATE_PROJECT, name=name, description=description)


def test_a_spanish_task_keeps_its_words_and_names_its_project() -> None:
    intent = route("por favor construye una API de tareas con autenticación")
    assert intent.task == "construye una API de tareas con autenticación"
    assert project_name_for("construye una API de tareas con autenticación") == "api-de-tareas"
    assert project_name_for("quero uma loja online") == "loja-online"
