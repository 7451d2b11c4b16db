"""The check harness the end-to-end client scripts share: `@check(name)` runs a check at once
and records it; `summary()` prints the last line the Rust test reads."""

import json

checks = []


def check(name):
    def wrap(fn):
        fn()
        checks.append(name)
        print(f"ok {name}", flush=True)
        return fn

    return wrap


def summary():
    print(json.dumps({"passed": checks}))
