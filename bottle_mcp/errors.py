"""The project's error tree.

Every error says what is wrong and how to fix it; the MCP layer turns them
into tool errors the supervising agent can act on, the CLI prints them.

    BottleError
    ├── ManifestError          the manifest file is missing or invalid
    ├── PlanError              a spec cannot become a plan (unknown agent, missing skill, key file, ...)
    ├── UnknownPlanError       a plan id this server never issued (or that expired)
    ├── StalePlanError         the manifest changed between prepare and launch
    ├── BottleNotFoundError    no bottle with that id, or it belongs to another server
    ├── BottleGoneError        the bottle existed but vanished (removed behind our back, crashed)
    ├── PathError              a host or bottle path is outside what the manifest allows
    ├── ImageMissingError      the image is not on the engine; says which command builds it
    ├── LaunchError            bringing a bottle up failed; what was created has been removed
    ├── EngineError            the engine answered with an error
    │   ├── EngineNotFoundError      the engine has no such object
    │   └── EngineUnreachableError   no engine answers at all
    ├── BackendNotFoundError   BOTTLE_MCP_BACKEND names a backend that does not exist
    ├── LimitError             a server-side limit was reached (too many bottles, ...)
    ├── InvalidArgumentError   a tool or command-line argument is well-typed but unusable (empty prompt, ...)
    ├── CopyError              packing or unpacking a copy failed inside the bottle
    ├── ImageBuildError        an image cannot be built as asked
    ├── AgentCommandError      the manifest's agent command cannot be run as the manifest wrote it
    ├── ApprovalError          a launch that needs a person's approval did not get it (or it was not recorded)
    ├── JobError               a job could not be started or read in its bottle
    │   └── JobNotFoundError   no job with that id on this server
    ├── NotARepositoryError    the bottle has no host repository (not launched with copy_cwd)
    └── GitError               git failed inside the bottle
"""

from __future__ import annotations


class BottleError(Exception):
    """Root of every error this project raises on purpose."""


class ManifestError(BottleError):
    """The manifest cannot be read or does not validate."""


class PlanError(BottleError):
    """A spec cannot be turned into a plan."""


class UnknownPlanError(BottleError):
    def __init__(self, plan_id: str) -> None:
        super().__init__(
            f"no plan with id {plan_id!r}; plans live only as long as the server that made them. "
            "Call prepare_bottle again and launch the plan_id it returns."
        )
        self.plan_id = plan_id


class StalePlanError(BottleError):
    """The manifest on disk no longer matches the one the plan was made from."""


class BottleNotFoundError(BottleError):
    def __init__(self, bottle_id: str, hint: str | None = None) -> None:
        msg = f"no bottle {bottle_id!r} belongs to this server"
        msg += f"; {hint}" if hint else "; call list_active to see live bottles, or launch_bottle to start one."
        super().__init__(msg)
        self.bottle_id = bottle_id


class BottleGoneError(BottleError):
    def __init__(self, bottle_id: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"bottle {bottle_id!r} is gone{extra}: it was removed or crashed outside this server. "
            "Its state is lost; launch a new bottle with prepare_bottle and launch_bottle."
        )
        self.bottle_id = bottle_id


class PathError(BottleError):
    """A path is not allowed."""


class ImageMissingError(BottleError):
    def __init__(self, image: str, fix: str) -> None:
        super().__init__(f"image {image!r} is not present on the engine; {fix}")
        self.image = image


class LaunchError(BottleError):
    """Launch failed half-way; everything created so far has been removed."""


class EngineError(BottleError):
    """The container engine refused or failed an operation."""


class EngineNotFoundError(EngineError):
    """The engine has no object by that name or id."""


class EngineUnreachableError(EngineError):
    def __init__(self, where: str, detail: str = "", fix: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        fix = fix or (
            "start it (scripts/setup.sh starts a local one) or point DOCKER_HOST or a Docker context at a "
            "running engine"
        )
        super().__init__(f"the container engine at {where} is unreachable{extra}. To fix: {fix}, then retry.")
        self.where = where
        self.fix = fix


class BackendNotFoundError(BottleError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown backend {name!r} (from BOTTLE_MCP_BACKEND); known backends: {', '.join(sorted(known))}"
        )
        self.name = name


class LimitError(BottleError):
    """A configured limit was reached."""


class InvalidArgumentError(BottleError):
    """A tool or command-line argument passed its schema but cannot be used; the message says what to pass."""


class CopyError(BottleError):
    """Packing or unpacking a copy failed inside the bottle (a folder it cannot write, a file it cannot read)."""


class ImageBuildError(BottleError):
    """An image cannot be built as asked (no recipe, or the build failed)."""


class AgentCommandError(BottleError):
    """The agent's command in the manifest cannot be turned into a run."""


class ApprovalError(BottleError):
    """A launch needed a person's approval and did not get it, or the decision could not be recorded."""


class JobError(BottleError):
    """A job could not be started, or what the bottle reported about it is unreadable."""


class JobNotFoundError(JobError):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"no job {job_id[:40]!r} on this server; list_jobs(bottle_id) lists the jobs of a bottle "
            "(jobs live as long as the server and their bottle)"
        )
        self.job_id = job_id


class NotARepositoryError(BottleError):
    """Commits or diffs were asked of a bottle that was not launched with copy_cwd."""


class GitError(BottleError):
    """A git command inside the bottle failed."""
