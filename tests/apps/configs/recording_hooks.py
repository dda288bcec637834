"""A Gunicorn-style config file whose hooks record every call, with what they saw, as JSON lines.

The file to write is named by the HOOK_LOG environment variable; HOOK_RAISE names hooks that must raise.
Each hook reads the attributes real-world hooks read (server.cfg, server.log, worker.pid, worker.age ...).
"""

import json
import os
import time

_RAISE = set(filter(None, os.environ.get("HOOK_RAISE", "").split(",")))


def _record(name, **fields):
    line = json.dumps({"hook": name, "in_pid": os.getpid(), "at": time.monotonic(), **fields})
    with open(os.environ["HOOK_LOG"], "a") as log:
        log.write(line + "\n")
    if name in _RAISE:
        raise RuntimeError(f"{name} was told to raise")


def _server(server):
    server.log.info("hook sees master pid %s", server.pid)
    return {"server_pid": server.pid, "workers_setting": server.cfg.workers, "proc_name": server.proc_name}


def _worker(worker):
    worker.log.debug("hook sees worker %s", worker.pid)
    return {"worker_pid": worker.pid, "age": worker.age, "ppid": worker.ppid}


def on_starting(server):
    _record("on_starting", **_server(server))


def on_reload(server):
    _record("on_reload", **_server(server))


def when_ready(server):
    _record("when_ready", listeners=len(server.LISTENERS), **_server(server))


def pre_fork(server, worker):
    _record("pre_fork", **_server(server), **_worker(worker))


def post_fork(server, worker):
    _record("post_fork", **_server(server), **_worker(worker))


def post_worker_init(worker):
    _record("post_worker_init", has_app=worker.app is not None, **_worker(worker))


def worker_int(worker):
    _record("worker_int", **_worker(worker))


def worker_abort(worker):
    _record("worker_abort", **_worker(worker))


def pre_request(worker, req):
    _record("pre_request", method=req.method, path=req.path, uri=req.uri, headers=dict(req.headers), **_worker(worker))


def post_request(worker, req, environ, resp):
    _record(
        "post_request",
        path=req.path,
        status=resp.status,
        status_code=resp.status_code,
        sent=resp.sent,
        query=environ["QUERY_STRING"],
        nr=worker.nr,
        **_worker(worker),
    )


def child_exit(server, worker):
    _record("child_exit", **_server(server), **_worker(worker))


def worker_exit(server, worker):
    _record("worker_exit", **_server(server), **_worker(worker))


def nworkers_changed(server, new_value, old_value):
    _record("nworkers_changed", new=new_value, old=old_value)


def on_exit(server):
    _record("on_exit", **_server(server))


def pre_exec(server):
    _record("pre_exec", **_server(server))
