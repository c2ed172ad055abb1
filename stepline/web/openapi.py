"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json."""

from stepline.engine.states import JOB_STATUSES, LOG_LEVELS, TASK_STATUSES, Status
from stepline.web.http import MAX_INT_ARG


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, **extra) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, **extra}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


ERRORS = {str(code): _json(_ref("Error"), text) for code, text in
          ((400, "Bad request"), (401, "Authentication required"), (404, "Not found"),
           (409, "Conflict with the job's state"),
           (503, "Database unavailable (locked, full): nothing changed; retry"))}
# A request line over gunicorn's limit (4,094 bytes) is refused before Stepline sees it.
ERRORS["414"] = {"description": "URI too long (answered by gunicorn, not JSON)"}
# A POST that is neither JSON nor bearer-authenticated could come from a foreign page.
POST_ERRORS = {**ERRORS, "403": _json(_ref("Error"), "Missing CSRF token: send JSON or a"
                                                     " bearer token")}
STATUS = {"type": "string", "enum": [s.value for s in Status]}
JOB_STATUS = {"type": "string", "enum": [s.value for s in JOB_STATUSES]}
TASK_STATUS = {"type": "string", "enum": [s.value for s in TASK_STATUSES]}
NULLABLE_NUMBER = {"type": ["number", "null"]}
NULLABLE_STRING = {"type": ["string", "null"]}
TASKS = {"type": "object", "required": [s.value for s in TASK_STATUSES],
         "properties": {s.value: {"type": "integer"} for s in TASK_STATUSES},
         "description": "The step's (or job's) tasks by status. `cancelled`, beside DESIGN's"
                        " four, counts a stopped fan-out's tasks that never ran to the end."}
STEP = {"type": "object", "required": ["step_id", "name", "status", "log_count", "depends",
                                       "tasks", "started_at", "finished_at", "error"],
        "properties": {"step_id": {"type": "string"}, "name": {"type": "string"},
                       "type": {"type": "string"}, "status": STATUS,
                       "log_count": {"type": "integer"},
                       "depends": {"type": "array", "items": {"type": "string"}},
                       "tasks": TASKS, "started_at": NULLABLE_NUMBER,
                       "finished_at": NULLABLE_NUMBER, "error": NULLABLE_STRING,
                       "version": {"type": "integer"},
                       "progress": {"type": "object"}}}
TASK = {"type": "object", "required": ["task_id", "idx", "status", "attempts", "error", "worker",
                                       "started_at", "finished_at"],
        "properties": {"task_id": {"type": "integer"}, "idx": {"type": "integer"},
                       "status": TASK_STATUS, "attempts": {"type": "integer"},
                       "error": NULLABLE_STRING, "worker": NULLABLE_STRING,
                       "started_at": NULLABLE_NUMBER, "finished_at": NULLABLE_NUMBER}}
# `[params.NAME]` min / max / description, for the params that declare them
PARAM_LIMIT = {"type": "object", "required": ["min", "max", "description"], "properties": {
    "min": NULLABLE_NUMBER, "max": NULLABLE_NUMBER, "description": {"type": "string"}}}
DEFINITION = {"type": "object",
              "required": ["name", "description", "params", "limits", "steps"],
              "properties": {
                  "name": {"type": "string"}, "description": {"type": "string"},
                  "params": {"type": "object", "description": "name -> default value"},
                  "limits": {"type": "object", "additionalProperties": PARAM_LIMIT},
                  "steps": {"type": "array", "items": {
                      "type": "object", "required": ["name", "type", "depends"],
                      "properties": {"name": {"type": "string"}, "type": {"type": "string"},
                                     "depends": {"type": "array",
                                                 "items": {"type": "string"}}}}}}}
JOB = {"type": "object", "required": ["job_id", "definition", "status", "version"],
       "properties": {"job_id": {"type": "string"}, "definition": {"type": "string"},
                      "params": {"type": "object"}, "status": JOB_STATUS,
                      "error": NULLABLE_STRING, "version": {"type": "integer"},
                      "created_at": {"type": "number"}, "started_at": NULLABLE_NUMBER,
                      "finished_at": NULLABLE_NUMBER, "steps_total": {"type": "integer"},
                      "steps_done": {"type": "integer"}, "steps_failed": {"type": "integer"},
                      "tasks": TASKS,
                      "rerun_of": NULLABLE_STRING}}

SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "Stepline", "version": "0.1.0",
             "description": "Run multi-step jobs; watch them live over /ws or /events."},
    "components": {
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Job": JOB, "Step": STEP,
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{}, {"bearer": []}],
    "paths": {
        "/api/jobs": {"get": {
            "summary": "List jobs, newest first",
            "parameters": [_query("status", JOB_STATUS), _query("q", {"type": "string"}),
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                           _query("offset", {"type": "integer", "minimum": 0,
                                              "maximum": MAX_INT_ARG})],
            "responses": {"200": _json({"type": "object", "required": ["jobs", "total"],
                                        "properties": {"jobs": {"type": "array",
                                                                "items": _ref("Job")},
                                                       "total": {"type": "integer"},
                                                       "limit": {"type": "integer"},
                                                       "offset": {"type": "integer"}}}),
                          **ERRORS}}},
        "/api/jobs/{job_id}": {
            "get": {"summary": "One job with its steps",
                    "parameters": [_path_param("job_id")],
                    "responses": {"200": _json({"allOf": [_ref("Job"), {
                        "type": "object", "properties": {
                            "steps": {"type": "array", "items": _ref("Step")}}}]}),
                        **ERRORS}},
            "delete": {"summary": "Delete a finished job and its logs",
                       "parameters": [_path_param("job_id")],
                       "responses": {"204": {"description": "Deleted"}, **ERRORS}}},
        "/api/jobs/{job_id}/structure": {"get": {
            "summary": "The job's status and every step's status, counts and times",
            "parameters": [_path_param("job_id")],
            "responses": {"200": _json({"type": "object",
                                        "required": ["job_id", "status", "version",
                                                     "updated_at", "steps"],
                                        "properties": {"job_id": {"type": "string"},
                                                       "status": JOB_STATUS,
                                                       "version": {"type": "integer"},
                                                       "updated_at": {"type": "number"},
                                                       "steps": {"type": "array",
                                                                 "items": STEP}}}),
                          **ERRORS}}},
        "/api/jobs/{job_id}/steps/{step_id}/logs": {"get": {
            "summary": "Log lines after a line number",
            "parameters": [_path_param("job_id"), _path_param("step_id"),
                           _query("after", {"type": "integer", "minimum": 0,
                                            "maximum": MAX_INT_ARG}),
                           _query("limit", {"type": "integer", "minimum": 1,
                                            "maximum": 10000}),
                           _query("level", {"type": "string", "enum": list(LOG_LEVELS),
                                            "description": "this level and more severe"}),
                           _query("q", {"type": "string"})],
            "responses": {"200": _json({"type": "object",
                                        "required": ["lines", "next_after", "total"],
                                        "properties": {
                                            "lines": {"type": "array", "items": {
                                                "type": "object",
                                                "required": ["line", "ts", "level", "message"],
                                                "properties": {
                                                    "line": {"type": "integer"},
                                                    "ts": {"type": "number"},
                                                    "level": {"type": "string"},
                                                    "message": {"type": "string"}}}},
                                            "next_after": {"type": "integer"},
                                            "total": {"type": "integer"}}}),
                          **ERRORS}}},
        "/api/jobs/{job_id}/steps/{step_id}/logs.txt": {"get": {
            "summary": "The whole step log as text (streamed)",
            "parameters": [_path_param("job_id"), _path_param("step_id")],
            "responses": {"200": {"description": "OK",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **ERRORS}}},
        "/api/jobs/{job_id}/steps/{step_id}/tasks": {"get": {
            "summary": "One page of a fan-out step's tasks, in index order",
            "parameters": [_path_param("job_id"), _path_param("step_id"),
                           _query("status", TASK_STATUS),
                           _query("offset", {"type": "integer", "minimum": 0,
                                             "maximum": MAX_INT_ARG}),
                           _query("limit", {"type": "integer", "minimum": 1,
                                            "maximum": 1000})],
            "responses": {"200": _json({"type": "object", "required": ["tasks", "total"],
                                        "properties": {
                                            "tasks": {"type": "array", "items": TASK},
                                            "total": {"type": "integer"}}}),
                          **ERRORS}}},
        "/api/definitions": {"get": {
            "summary": "Loaded definitions, and the files that failed to load",
            "responses": {"200": _json({"type": "object",
                                        "required": ["definitions", "errors"],
                                        "properties": {"definitions": {"type": "array",
                                                                       "items": DEFINITION},
                                                       "errors": {"type": "array"}}})}}},
        "/api/definitions/{name}/run": {"post": {
            "summary": "Queue a job",
            "parameters": [_path_param("name", example="load_demo")],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"params": {"type": "object"}}}}}},
            "responses": {"201": _json({"type": "object", "required": ["job_id"],
                                        "properties": {"job_id": {"type": "string"}}},
                                       "Queued"), **POST_ERRORS}}},
        "/api/jobs/{job_id}/cancel": {"post": {
            "summary": "Cancel a pending job now, or ask a running one to stop",
            "parameters": [_path_param("job_id")],
            "responses": {"200": _json({"type": "object", "properties": {
                "job_id": {"type": "string"},
                "status": {"type": "string", "enum": [Status.CANCELLED.value, "cancelling"]}}}),
                **POST_ERRORS}}},
        "/api/jobs/{job_id}/rerun": {"post": {
            "summary": "Queue a new job with the same definition and params",
            "parameters": [_path_param("job_id")],
            "responses": {"201": _json({"type": "object", "required": ["job_id"],
                                        "properties": {"job_id": {"type": "string"}}},
                                       "Queued"), **POST_ERRORS}}},
    },
}
