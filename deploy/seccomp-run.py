#!/usr/bin/python3
"""Runs a command under a Docker-format seccomp profile, without Docker.

Usage: deploy/seccomp-run.py deploy/seccomp-io_uring.json -- COMMAND [ARGS...]

Docker applies the profile with libseccomp; this does the same through
libseccomp's Python binding (Debian: python3-seccomp), so the shipped profile
can be checked on a machine with no Docker engine: the coordinator must start,
serve and stop under it. Supports what the profile uses: defaultAction,
defaultErrnoRet, names with SCMP_ACT_ALLOW / SCMP_ACT_ERRNO, and argument
filters with SCMP_CMP_MASKED_EQ.
"""
import json
import os
import sys

import seccomp


def action(rule, profile):
    kind = rule["action"]
    if kind == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if kind == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(rule.get("errnoRet", profile.get("defaultErrnoRet", 1)))
    raise SystemExit(f"unsupported action {kind}")


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit(__doc__)
    profile = json.load(open(sys.argv[1]))
    if profile["defaultAction"] != "SCMP_ACT_ERRNO":
        raise SystemExit("expected defaultAction SCMP_ACT_ERRNO")
    f = seccomp.SyscallFilter(seccomp.ERRNO(profile.get("defaultErrnoRet", 1)))
    for rule in profile["syscalls"]:
        act = action(rule, profile)
        for name in rule["names"]:
            try:
                seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
            except (ValueError, RuntimeError):
                continue  # not a syscall on this architecture
            args = []
            for a in rule.get("args", []):
                if a["op"] != "SCMP_CMP_MASKED_EQ":
                    raise SystemExit(f"unsupported op {a['op']}")
                args.append(seccomp.Arg(a["index"], seccomp.MASKED_EQ, a["value"], a["valueTwo"]))
            f.add_rule(act, name, *args)
    f.load()
    os.execvp(sys.argv[3], sys.argv[3:])


if __name__ == "__main__":
    main()
