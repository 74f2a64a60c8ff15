"""The offline intent router: free text -> Intent, for when no LLM key is configured.

Deliberately small and predictable: ordered rules (regexes over a cleaned-up copy of the
message), first match wins, no scoring and no ML. The rules know English, Spanish and
Portuguese phrasings (the seed's multi-language list); they match a copy without accents,
so "qué"/"que" and "você"/"voce" are one spelling, while tasks and names keep theirs.
When in doubt it answers UNKNOWN, and the agent says plainly that it did not understand
and points at /help: a wrong guess that starts a coding task costs the user far more than
a "try /help".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["AGENT_NAMES", "Intent", "IntentKind", "project_name_for", "route"]

# AutoCoder's six agents, in pipeline order; hints are reported in this order.
AGENT_NAMES: tuple[str, ...] = ("planner", "developer", "tester", "uiux", "database", "devops")


class IntentKind(StrEnum):
    CREATE_PROJECT = "create_project"
    LIST_PROJECTS = "list_projects"
    RUN_TASK = "run_task"
    STATUS = "status"
    RESULT = "result"
    FILES = "files"
    HELP = "help"
    AGENTS = "agents"
    GREETING = "greeting"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Intent:
    kind: IntentKind
    name: str | None = None  # CREATE_PROJECT: the project name, if given
    description: str | None = None  # CREATE_PROJECT: what the project is, if given
    task: str | None = None  # RUN_TASK: the request, politeness stripped, case kept
    agents: tuple[str, ...] = ()  # RUN_TASK: agents the wording points at; () = let AutoCoder pick
    session_ref: str | None = None  # STATUS / RESULT / FILES: an explicit "sess_<hex>" in the message


_FLAGS = re.IGNORECASE

# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------

_SESSION_RE = re.compile(r"\bsess_[0-9a-f]+\b", _FLAGS)
_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "´": "'", "`": "'"})
# Emoji and pictographs (So), modifiers (Sk), private/unassigned code points (emoji newer
# than this Python's Unicode tables), plus the joiners that glue emoji sequences together.
_DROP_CATEGORIES = frozenset({"So", "Sk", "Co", "Cn", "Cs"})
_DROP_CHARS = frozenset("\u200d\ufe0e\ufe0f\u20e3")
_EDGE_PUNCTUATION = " \t\n.,;:!?¡¿~*-_()[]\"'"
# Leading courtesy and framing that carries no intent. Applied repeatedly, and only when
# something follows ("help me" alone is a request for help).
_LEAD_IN_RE = re.compile(
    r"^(?:hi|hello|hey|yo|ok(?:ay)?|so|and|also|now|then|just|kindly|pls|plz|please"
    r"|(?:can|could|would|will)\s+(?:you|u)(?:\s+please)?"
    r"|can\s+i|could\s+i|may\s+i"
    r"|i(?:\s+(?:want|need|would\s+like|wanna)|'d\s+like)\s+(?:you\s+)?to"
    r"|i\s+wanna|let'?s|let\s+us|help\s+me(?:\s+to)?|go\s+ahead\s+and|bot"
    # Spanish and Portuguese (matched without accents)
    r"|hola|buenas|ola|oi|bueno|vale|entonces|tambien|ahora|tambem|agora|entao"
    r"|(?:me\s+)?(?:puedes|podrias|puede|podria)|(?:voce\s+)?(?:pode|podes|poderia)(?:\s+me)?"
    r"|(?:quiero|quisiera|quero|queria|gostaria)\s+(?:que|de)|me\s+ayudas\s+a|ayudame\s+a|me\s+ajuda\s+a"
    r")\b[\s,.!:;-]*",
    _FLAGS,
)
_PLEASE_RE = re.compile(r"\s*\b(?:please|pls|plz|por\s+favor|porfa)\b\s*", _FLAGS)


def _clean(text: str) -> str:
    """Drop emoji and edge punctuation, unify quotes, collapse blanks; case is kept."""
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    text = "".join(
        " " if ch in _DROP_CHARS or unicodedata.category(ch) in _DROP_CATEGORIES else ch for ch in text
    )
    return " ".join(text.split()).strip(_EDGE_PUNCTUATION)


def _fold(text: str) -> str:
    """The same text without accents ("é" -> "e", "ç" -> "c"), character for character, so a
    match's positions in the folded copy are its positions in the original."""
    out = []
    for ch in text:
        base = "".join(c for c in unicodedata.normalize("NFD", ch) if not unicodedata.combining(c))
        out.append(base if len(base) == 1 else ch)
    return "".join(out)


def _strip_lead_in(text: str) -> str:
    text = _PLEASE_RE.sub(" ", f" {text} ").strip(_EDGE_PUNCTUATION)
    while True:
        m = _LEAD_IN_RE.match(_fold(text))
        rest = text[m.end() :].strip(_EDGE_PUNCTUATION) if m else ""
        if not m or not rest:
            return text
        text = rest


# --------------------------------------------------------------------------------------
# Rules, tried in the order of `route`
# --------------------------------------------------------------------------------------


def _rx(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, _FLAGS) for p in patterns)


def _any(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    return any(p.search(text) for p in patterns)


# Slash commands are exact, so they bypass every heuristic.
_COMMANDS: dict[str, IntentKind] = {
    "help": IntentKind.HELP,
    "start": IntentKind.HELP,
    "commands": IntentKind.HELP,
    "list": IntentKind.LIST_PROJECTS,
    "projects": IntentKind.LIST_PROJECTS,
    "status": IntentKind.STATUS,
    "files": IntentKind.FILES,
    "agents": IntentKind.AGENTS,
    "new": IntentKind.CREATE_PROJECT,
    "create": IntentKind.CREATE_PROJECT,
    "task": IntentKind.RUN_TASK,
    "run": IntentKind.RUN_TASK,
}

# The whole message is a greeting (or thanks: small talk deserves a friendly reply, not
# "I did not understand").
_GREETING_RE = re.compile(
    r"(?:hi|hello|hey|hiya|howdy|yo|hola|greetings|sup|what'?s up|wassup"
    r"|good (?:morning|afternoon|evening|day)|thanks?(?: you)?|thank u|thx|ty|cheers)"
    r"(?:\s+(?:there|bot|friend|all|everyone|again|a lot|so much|mate))*",
    _FLAGS,
)

# Asking what the bot can do. Anchored single words, or unmistakable questions anywhere.
_HELP = _rx(
    r"^(?:help|help me|commands|menu|usage|instructions|info|options|\?)$",
    r"\bwhat (?:can|do) you do\b",
    r"\bwhat can i (?:do|ask)\b",
    r"\bhow (?:does|do) (?:this|it|you) work\b",
    r"\bhow (?:do|can|should) i use (?:this|you|it|the bot)\b",
    r"\bhow to use\b",
    r"^(?:what|who) are you$",
    r"^what is this$",
    r"\b(?:show|list|what are) (?:me )?(?:the |your )?commands\b",
)

# Asking about AutoCoder's agents (not asking an agent to do something).
_AGENTS = _rx(
    r"^(?:what|which|who|list|show(?: me)?|tell me about|how many|name)\b.*\bagents?\b",
    r"^(?:the )?agents$",
)

# Progress of the current (or a named) session. Anchored, because "status" inside a task
# ("add a status page") is not a question about progress.
_STATUS = _rx(
    r"^(?:status|progress|updates?|any updates?|any news|eta)\b(?:\s+(?:of|for|on)\b.*|\s+sess_\w+)?$",
    r"^status update$",
    r"^(?:what'?s|what is|whats|check|show(?: me)?|see|get|give me|tell me|how'?s|how is)\b.*"
    r"\b(?:status|progress)\b",
    r"\bhow(?:'s| is| are)? (?:it|things|everything|my \w+|the \w+) (?:going|coming along|doing)\b",
    r"^(?:is|are) (?:it|you|they|we|my \w+|the \w+) (?:done|ready|finished|complete|there)(?: yet)?$",
    r"^(?:are you|is it) (?:still )?(?:working|running)\b",
    r"^how (?:far|long)\b",
    r"^sess_[0-9a-f]+$",
)

# Asking what came out of the work: the last session's summary and its files.
_RESULT = _rx(
    r"^what (?:did|have) (?:you|u|we|they|the agents) "
    r"(?:make|made|build|built|do|done|create|created|write|written|generate|generated|produce|produced)\b",
    r"^what(?:'s|s| is| was| were) (?:the )?(?:results?|outcome|output)\b",
    r"^(?:show|tell|give)(?: me)? (?:the |my )?(?:results?|outcome|summary)\b",
    r"^(?:how|what) did (?:it|the session|the task) (?:go|turn out|end)\b",
)

# Getting generated files. The object must be the files/code, with an article when the
# verb is "give"/"get" so that "give me code for a todo app" stays a coding task.
_FILES = _rx(
    r"^(?:show|send|share|download|fetch|see|view|list|export|zip)(?: me| us)?"
    r"(?: (?:the|my|our|all(?: the)?|those|these|its))?(?: generated| resulting| output| final)?"
    r" (?:files?|code|source(?: code)?|output|results?|zip|repo(?:sitory)?|artifacts?)\b",
    r"^(?:give|get)(?: me| us)? (?:the|my|our|all(?: the)?|those|these)"
    r"(?: generated| resulting| output| final)? (?:files?|code|source(?: code)?|output|results?|zip)\b",
    r"^(?:the )?(?:generated )?files?\b",
    r"^download\b",
    r"\bwhere (?:are|is|can i find) (?:the|my) (?:files?|code|output)\b",
)

# Listing projects.
_LIST_PROJECTS = _rx(
    r"^(?:list|show|see|view|display|get|give)(?: me| us)?(?: all)?(?: of)?(?: (?:my|the|our))?"
    r"(?: current| existing| active| old)? projects\b",
    r"\b(?:what|which) projects\b",
    r"^(?:my |our |all )?projects$",
    r"\bhow many projects\b",
    r"\bprojects do i have\b",
)


# --------------------------------------------------------------------------------------
# The same intents in Spanish and Portuguese, matched without accents (see _fold). Replies
# stay in English: these only make sure "lista mis proyectos" is not "I didn't understand".
# --------------------------------------------------------------------------------------

_GREETING_ES_PT_RE = re.compile(
    r"(?:hola|buenas|buen(?:os)? dias|buenas (?:tardes|noches)|que tal|(?:muchas )?gracias"
    r"|ola|oi|bom dia|boa (?:tarde|noite)|tudo bem|(?:muito )?obrigad[oa]|valeu)"
    r"(?:\s+(?:bot|amigo|amiga|de nuevo|de novo|a todos|pessoal))*",
    _FLAGS,
)
_HELP += _rx(
    r"^(?:ayuda|ayudame|ajuda|ajude-me|me ajuda|socorro|comandos|instrucciones|instrucoes|opciones|opcoes)$",
    r"\bque (?:puedes|sabes|podes) hacer\b",
    r"\bque (?:voce |tu )?(?:pode|podes|sabe|consegue) fazer\b",
    r"^como (?:funciona|funcionas|te uso|se usa|uso esto|uso isso"
    r"|usar (?:esto|isso|o bot|el bot))\b",
    r"\b(?:muestra|mostra|lista|cuales son|quais sao) (?:me )?(?:los |os )?comandos\b",
    r"^(?:quien|quem|que|o que) (?:eres|es|e|es tu|voce e)(?: tu| voce)?$",
)
_AGENTS += _rx(
    r"^(?:que|cuales|quais|quantos|cuantos|lista|mostra|muestra(?:me)?|mostre)\b.*\bagentes?\b",
    r"^(?:los |os )?agentes$",
)
_RESULT += _rx(
    r"^que (?:hiciste|hicieron|has hecho|han hecho|fizeste|fez|fizeram|voce fez)\b",
    r"^(?:cual|qual) (?:es|fue|e|foi) (?:el |o )?resultado\b",
    r"^(?:muestra|mostra|mostre|dame|da-me)(?:me)? (?:el |o )?(?:resultado|resumen|resumo)\b",
    r"^como (?:salio|fue|foi|correu|ficou)\b",
)
_STATUS += _rx(
    r"^(?:estado|progreso|progresso|novedades|novidades|avance|andamento)\b(?:\s+(?:de|del|da|do)\b.*|\s+sess_\w+)?$",
    r"^(?:cual es|qual e|como esta|como va|como vai|ver|mostra|muestra(?:me)?|mostre)\b.*"
    r"\b(?:estado|progreso|progresso|status|andamento)\b",
    r"^como (?:va|vai|anda|esta|estao)"
    r"(?: (?:eso|isso|esto|isto|la tarea|a tarefa|el proyecto|o projeto|todo|tudo))?$",
    r"^(?:ya )?(?:esta|estan|ja esta|ta) (?:listo|lista|pronto|pronta|terminado|terminada)\b",
    r"^(?:ja )?(?:terminou|acabou|termino|acabo|terminaste)\b",
)
_FILES += _rx(
    r"^(?:muestra|mostra|mostre|ensena|envia|manda|descarga|descargar|baixa|baixar|ver|quiero ver|quero ver"
    r"|dame|da|de|pasame|passa)(?:me|-me)?(?: (?:los|las|mis|el|os|as|meus|minhas|o|todos los|todos os))?"
    r"(?: (?:generados|gerados))? (?:archivos|ficheros|codigo|arquivos|ficheiros|resultados?)\b",
    r"^(?:los |os |mis |meus )?(?:archivos|arquivos|ficheros|ficheiros)\b",
    r"\bdonde (?:estan|esta) (?:los|mis|el) (?:archivos|codigo)\b",
    r"\bonde (?:estao|esta|ficam) (?:os|meus|o) (?:arquivos|codigo)\b",
)
_LIST_PROJECTS += _rx(
    r"^(?:lista|listar|listame|muestra|muestrame|mostrar|mostra|mostre|ver|dame|da-me|enumera)"
    r"(?: me)?(?: (?:todos )?(?:mis|los|meus|os|tus|seus))? proye?c?tos\b",
    r"^(?:lista|listar|ver|mostra|mostre)(?: (?:todos )?(?:mis|los|meus|os))? projetos\b",
    r"\b(?:que|cuales|quais) (?:son |sao )?(?:mis |meus |os meus )?(?:proyectos|projetos)\b",
    r"^(?:mis |meus |os meus |todos los |todos os )?(?:proyectos|projetos)$",
    r"\b(?:cuantos|quantos) (?:proyectos|projetos)\b",
    r"\b(?:proyectos|projetos) (?:tengo|tenho)\b",
)

# Creating a project: a creation verb whose object is "project" (at most two modifier
# words in between: "a new django project"), so "create a docker configuration for the
# project" does not qualify.
_CREATE_PROJECT_RE = re.compile(
    r"^(?:(?:create|start|make|set\s*up|init(?:iali[sz]e)?|begin|open|add|spin\s+up|kick\s+off"
    # Spanish and Portuguese: crea/crear/creame, haz, inicia, empieza, abre; cria/criar/crie, faz/faca, comeca
    r"|crea|crear|creame|haz|hazme|inicia|iniciar|empieza|empezar|abre|abrir"
    r"|cria|criar|crie|faz|faca|fazer|comeca|comecar)"
    r"(?:\s+me)?(?:\s+(?:a|an|the|my|un|una|el|mi|um|uma|o|meu))?"
    r"(?:\s+(?!for\b|to\b|with\b|of\b|in\b|para\b|con\b|com\b|de\b|en\b|em\b)[\w-]+){0,2}?"
    r"|new|nuevo|novo)\s+(?:project|proyecto|projeto|projecto)\b(?P<rest>.*)$",
    _FLAGS,
)
# "crea un proyecto nuevo llamado X": the adjective after the noun is not the name.
_NEW_AFTER_RE = re.compile(r"^\s*(?:nuevo|nueva|novo|nova)\b", _FLAGS)
# "create a project plan" is a planning task, not a project called "plan".
_NOT_A_NAME = frozenset(
    "plan plans roadmap structure timeline skeleton scaffold template readme documentation docs"
    " setup config configuration folder directory overview summary report outline brief".split()
)
# Words that start a description rather than name the project.
_DESCRIPTION_LEAD = re.compile(
    r"^(?:for|that|which|to|about|where|with|using|in|on|like|as|and|then|but|so|now"
    r"|para|que|sobre|con|com|usando|donde|onde|como|y|e|de|en|em)\b",
    _FLAGS,
)
_NAMED_RE = re.compile(
    r"^(?:(?:called|named|titled|name\s+it|with\s+(?:the\s+)?name"
    r"|llamado|llamada|que\s+se\s+llame|con(?:\s+el)?\s+nombre(?:\s+de)?"
    r"|chamado|chamada|com\s+o\s+nome(?:\s+de)?)\s+)"
    r"(?:[\"'](?P<quoted>[^\"']+)(?:[\"']|$)|(?P<word>[\w][\w.-]*))(?P<rest>.*)$",
    _FLAGS,
)
_BARE_NAME_RE = re.compile(r"^(?:[\"'](?P<quoted>[^\"']+)(?:[\"']|$)|(?P<word>[\w][\w.-]*))(?P<rest>.*)$")
_DESCRIPTION_JOINERS = re.compile(
    r"^(?:[:,;.\-–—]+\s*|(?:that|which)\s+(?:is|will\s+be|does)\s+|(?:for|about|as|to)\s+"
    r"|que\s+(?:es|sea|sera|e|seja)\s+|(?:para|sobre)\s+)",
    _FLAGS,
)

# Asking for work: the message starts with something AutoCoder can do ...
_TASK_VERBS = (
    "build|create|write|make|generate|design|implement|add|develop|code|program|set up|setup"
    "|configure|deploy|refactor|fix|debug|update|modify|change|improve|optimi[sz]e|test|plan"
    "|draft|scaffold|migrate|containeri[sz]e|dockeri[sz]e|document|review|integrate|connect"
    "|remove|delete|rename|port|convert|rewrite|redesign|style|extend|enhance|automate|prepare"
    "|produce|outline|sketch|model|normali[sz]e|secure|install|publish|launch|ship|host|scale"
    "|split|merge|clean up|restructure|translate|validate"
    # Spanish, then Portuguese (imperatives and infinitives; matched without accents)
    "|construye|construir|construyeme|crea|crear|creame|escribe|escribir|haz|hazme|hacer|genera|generar"
    "|disena|disenar|implementa|implementar|desarrolla|desarrollar|agrega|agregar|anade|anadir|arregla"
    "|arreglar|corrige|corregir|despliega|desplegar|programa|programar|prueba|probar|documenta|documentar"
    "|constroi|construa|cria|crie|criar|escreve|escreva|escrever|faz|faca|fazer|gera|gere|gerar|desenha"
    "|desenhe|projeta|projete|desenvolve|desenvolva|desenvolver|adiciona|adicione|adicionar|conserta"
    "|conserte|corrija|implanta|implante|implantar|testa|teste|testar"
)
_TASK_RE = re.compile(rf"^(?:{_TASK_VERBS})\b", _FLAGS)
# ... or states a want ("I need a login page", "I'd like an API for ...").
_WANT_RE = re.compile(
    r"^(?:(?:i(?:\s+(?:need|want|would\s+like)|'d\s+like)|i'm\s+looking\s+for)"
    r"\s+(?:a|an|some|the|my|to\s+have)\b|(?:give|get)\s+me\s+\w"
    r"|(?:quiero|quisiera|necesito|me\s+gustaria(?:\s+tener)?|quero|queria|preciso(?:\s+de)?|gostaria\s+de(?:\s+ter)?)"
    r"\s+(?:un|una|unos|unas|el|la|mi|um|uma|uns|umas|o|a|meu|minha)\b|(?:dame|da-me|me\s+da|me\s+de)\s+\w)",
    _FLAGS,
)

# Which agents a task's wording points at. Several may match; none means "AutoCoder
# decides". Word-bounded so "explain" is not "plan" and "rapid" is not "api".
_AGENT_HINTS: dict[str, tuple[re.Pattern[str], ...]] = {
    "planner": _rx(r"\bplan(?:s|ning)?\b", r"\broadmap\b", r"\barchitecture\b", r"\bmilestones?\b"),
    "developer": _rx(
        r"\bapis?\b",
        r"\bback-?end\b",
        r"\bcode\b",
        r"\bimplement(?:s|ed|ing|ation)?\b",
        r"\bendpoints?\b",
        r"\bfunctions?\b",
        r"\bclass(?:es)?\b",
        r"\bscripts?\b",
        r"\brefactor\w*\b",
        r"\bbugs?\b",
        r"\bgraphql\b",
        r"\bserver\b",
        # Things that are programs: "a todo app with a database" needs a developer too.
        r"\b(?:web\s*)?apps?\b",
        r"\bapplications?\b",
        r"\bservices?\b",
        r"\bwebsites?\b",
        r"\bbots?\b",
        r"\bcli\b",
        r"\btools?\b",
    ),
    "tester": _rx(
        r"\btests?\b",
        r"\btesting\b",
        r"\bcoverage\b",
        r"\bqa\b",
        r"\be2e\b",
        r"\bpytest\b",
        r"\bjest\b",
    ),
    "uiux": _rx(
        r"\bdashboards?\b",
        r"\bui\b",
        r"\bux\b",
        r"\bui/ux\b",
        r"\bfront-?end\b",
        r"\bpages?\b",
        r"\bscreens?\b",
        r"\blayout\b",
        r"\bcss\b",
        r"\bstyl(?:e|es|ing)\b",
        r"\bresponsive\b",
        r"\bmock-?ups?\b",
        r"\bwireframes?\b",
        r"\buser interface\b",
        r"\bdesign\b.*\binterface\b",
        r"\bforms?\b",
    ),
    "database": _rx(
        r"\bschemas?\b",
        r"\bdatabases?\b",
        r"\bdb\b",
        r"\bsql\b",
        r"\bpostgres(?:ql)?\b",
        r"\bmysql\b",
        r"\bsqlite\b",
        r"\bmongo(?:db)?\b",
        r"\btables?\b",
        r"\bdata ?models?\b",
        r"\bmigrations?\b",
        r"\borm\b",
        r"\bquer(?:y|ies)\b",
        r"\bindex(?:es)?\b",
    ),
    "devops": _rx(
        r"\bdocker\w*\b",
        r"\bcontaineri[sz]e\b",
        r"\bcontainers?\b",
        r"\bdeploy\w*\b",
        r"\bkubernetes\b",
        r"\bk8s\b",
        r"\bci\s*/\s*cd\b",
        r"\bci\b",
        r"\bpipelines?\b",
        r"\bhelm\b",
        r"\bterraform\b",
        r"\binfrastructure\b",
        r"\bgithub actions\b",
        r"\bnginx\b",
        r"\bhosting\b",
    ),
}


# The same hints in Spanish and Portuguese (matched without accents).
for _name, _patterns in {
    "planner": _rx(r"\bplan(?:ificar|ejar|o)?\b", r"\barquitect?ura\b", r"\bhitos\b", r"\bmarcos\b"),
    "developer": _rx(
        r"\bcodigo\b",
        r"\baplicaci(?:on|ones)\b",
        r"\baplica(?:cao|coes|tivo)\b",
        r"\bservi(?:cio|cios|co|cos)\b",
        r"\bfunc(?:ion|iones|ao|oes)\b",
        r"\bsitio web\b",
        r"\bservidor\b",
    ),
    "tester": _rx(r"\bpruebas?\b", r"\btestes?\b", r"\bprobar\b", r"\btestar\b"),
    "uiux": _rx(
        r"\binterfa(?:z|ce)\b",
        r"\bpaginas?\b",
        r"\bpantallas?\b",
        r"\btelas?\b",
        r"\bpain?el\b",
        r"\bformularios?\b",
        r"\bdiseno\b",
        r"\bestilos?\b",
    ),
    "database": _rx(
        r"\bbases? de datos\b",
        r"\bbancos? de dados\b",
        r"\besquemas?\b",
        r"\btablas?\b",
        r"\btabelas?\b",
        r"\bconsultas?\b",
        r"\bmigraci(?:on|ones)\b",
        r"\bmigra(?:cao|coes)\b",
    ),
    "devops": _rx(
        r"\bdespl(?:iegue|egar|iega)\w*\b",
        r"\bimplant\w*\b",
        r"\bcontenedor\w*\b",
        r"\bconteiner\w*\b",
        r"\binfraestrutura\b",
        r"\binfraestructura\b",
    ),
}.items():
    _AGENT_HINTS[_name] += _patterns


def _agent_hints(task: str) -> tuple[str, ...]:
    folded = _fold(task)
    return tuple(name for name in AGENT_NAMES if _any(_AGENT_HINTS[name], folded))


def _session_ref(text: str) -> str | None:
    m = _SESSION_RE.search(text)
    return m.group(0).lower() if m else None


def _create_project(rest: str) -> Intent:
    """Pull an optional name and description out of what follows "project". The rules read the
    folded text; the name and description keep the user's accents."""
    rest = rest.strip(" \t:,;.-–—")
    adjective = _NEW_AFTER_RE.match(_fold(rest))
    if adjective:
        rest = rest[adjective.end() :].strip(" \t:,;.-–—")
    name: str | None = None
    named = _NAMED_RE.match(_fold(rest))
    bare = None if named or _DESCRIPTION_LEAD.match(_fold(rest)) else _BARE_NAME_RE.match(rest)
    m = named or bare
    if m:
        group = "quoted" if m.group("quoted") else "word"
        name = rest[m.start(group) : m.end(group)].strip()
        rest = rest[m.start("rest") :]
    rest = rest.strip()
    while True:  # ": an online store", "for a todo REST API", "that is a blog"
        j = _DESCRIPTION_JOINERS.match(_fold(rest))
        if not j or not j.group(0):
            break
        rest = rest[j.end() :].strip()
    return Intent(IntentKind.CREATE_PROJECT, name=name or None, description=rest or None)


def _route_command(text: str, ref: str | None) -> Intent:
    command, _, arg = text[1:].partition(" ")
    kind = _COMMANDS.get(command.lower().split("@")[0], IntentKind.UNKNOWN)
    arg = arg.strip()
    if kind is IntentKind.CREATE_PROJECT:
        return _create_project(arg)
    if kind is IntentKind.RUN_TASK:
        return Intent(kind, task=arg, agents=_agent_hints(arg)) if arg else Intent(IntentKind.HELP)
    if kind in (IntentKind.STATUS, IntentKind.FILES):
        return Intent(kind, session_ref=ref)
    return Intent(kind)


def route(text: str) -> Intent:
    """Map one WhatsApp message to an Intent. Case-, punctuation- and emoji-insensitive."""
    cleaned = _clean(text)
    ref = _session_ref(cleaned)
    if not cleaned:
        return Intent(IntentKind.UNKNOWN)
    # 1. Slash commands: exact, no guessing.
    if text.strip().startswith("/"):
        return _route_command(text.strip(), ref)
    # 2. A bare greeting; a greeting followed by a request is handled as the request.
    if _GREETING_RE.fullmatch(cleaned) or _GREETING_ES_PT_RE.fullmatch(_fold(cleaned)):
        return Intent(IntentKind.GREETING)
    core = _strip_lead_in(cleaned)
    folded = _fold(core)  # what the rules read; what they return comes from `core`
    # 3. Questions about the bot itself come before anything that could read as a task.
    if _any(_HELP, folded):
        return Intent(IntentKind.HELP)
    if _any(_AGENTS, folded):
        return Intent(IntentKind.AGENTS)
    # 4. Results, status and files before tasks: "show me the code" is not "write code".
    if _any(_RESULT, folded):
        return Intent(IntentKind.RESULT, session_ref=ref)
    if _any(_STATUS, folded):
        return Intent(IntentKind.STATUS, session_ref=ref)
    if _any(_FILES, folded):
        return Intent(IntentKind.FILES, session_ref=ref)
    if _any(_LIST_PROJECTS, folded):
        return Intent(IntentKind.LIST_PROJECTS)
    # 5. Project creation before tasks: both start with "create".
    created = _CREATE_PROJECT_RE.match(folded)
    if created:
        first_word = (created.group("rest").split() or [""])[0].lower()
        if first_word not in _NOT_A_NAME:
            return _create_project(core[created.start("rest") :])
    # 6. Anything phrased as work is a coding task.
    if _TASK_RE.match(folded) or _WANT_RE.match(folded):
        return Intent(IntentKind.RUN_TASK, task=core, agents=_agent_hints(core))
    # 7. A bare session id asks about that session.
    if ref is not None and core.lower() == ref:
        return Intent(IntentKind.STATUS, session_ref=ref)
    return Intent(IntentKind.UNKNOWN)


# A project named after a request: what is to be built, without the asking around it.
_NAME_LEAD_RE = re.compile(
    rf"^(?:(?:{_TASK_VERBS})\s+|(?:i(?:\s+(?:need|want|would\s+like)|'d\s+like)|i'm\s+looking\s+for"
    r"|give\s+me|get\s+me|quiero|necesito|quero|preciso(?:\s+de)?|dame|da-me)\s+)?(?:(?:me|us)\s+)?"
    r"(?:(?:a|an|the|my|our|some|un|una|el|la|mi|um|uma|o|a|meu|minha)\s+)?"
    r"(?:(?:new|simple|small|basic|quick|little|tiny|nice|full|complete|working"
    r"|nuevo|nueva|sencillo|sencilla|pequeno|pequena|novo|nova|simples)\s+)*",
    _FLAGS,
)
# Where the thing's name ends and its description begins.
_NAME_STOP_RE = re.compile(
    r"\b(?:with|that|which|using|for|in|on|where|to|and|so|from|via|who|plus|including"
    r"|con|com|que|para|usando|donde|onde|y|e|en|em)\b",
    _FLAGS,
)
_NAME_MAX_WORDS = 3


def project_name_for(task: str) -> str:
    """A short project name for a request: "build me a todo app with a database" -> "todo-app"."""
    core = _fold(_strip_lead_in(_clean(task)))  # a name is plain ASCII: "diseño" -> "diseno"
    core = _NAME_LEAD_RE.sub("", core, count=1)
    core = _NAME_STOP_RE.split(core, maxsplit=1)[0]
    words = re.findall(r"[a-z0-9]+", core.lower())[:_NAME_MAX_WORDS]
    return "-".join(words) or "project"
