"""`mirror credentials`: temporary logins (issue, revoke) and their signing keys (rotate, drop, keys)."""

from __future__ import annotations

import argparse
import sys
import time

from mirror.commands.configfile import add_config_option
from mirror.config import Config, parse_duration
from mirror.logins import LoginError, LoginKeys, docker_config, kubernetes_secret


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("credentials", help="temporary logins: issue, revoke; their keys: rotate, drop")
    add_config_option(parser, "the config file `mirror serve` uses (its [auth] login_keys)")
    parser.set_defaults(run=run)
    actions = parser.add_subparsers(dest="action", required=True)
    issue = actions.add_parser("issue", help="print a username and password that expire")
    issue.add_argument("--user", required=True, help="the user the access rules know it as")
    issue.add_argument("--ttl", default="6h", help="how long it works (default 6h; e.g. 90m, 30d)")
    issue.add_argument("--kubernetes-secret", metavar="NAME", help="print a kubernetes.io/dockerconfigjson Secret")
    issue.add_argument("--docker-config", action="store_true", help="print a .dockerconfigjson")
    issue.add_argument("--server", help="the mirror as clients name it (default: the config's listen address)")
    revoke = actions.add_parser("revoke", help="end a temporary login before it expires")
    revoke.add_argument("jti", help="its id, as `issue` printed it")
    actions.add_parser("rotate", help="a new signing key; logins signed by older keys stay valid")
    drop = actions.add_parser("drop", help="stop accepting logins signed by a key")
    drop.add_argument("kid", help="the key id, as `keys` lists it")
    keys = actions.add_parser("keys", help="list the signing keys, newest (the one that signs) first")
    # --config after the action too (`mirror credentials issue --user ci --config FILE`), as every command takes it.
    for action in (issue, revoke, actions.choices["rotate"], drop, keys):
        add_config_option(action, "the config file `mirror serve` uses (its [auth] login_keys)")


def run(args: argparse.Namespace, config: Config) -> int:
    if config.auth.login_keys is None:
        print("mirror credentials: set [auth] login_keys to the file that keeps their keys", file=sys.stderr)
        return 2
    keys = LoginKeys(config.auth.login_keys)
    try:
        return _act(args, config, keys)
    except LoginError as exc:
        print(f"mirror credentials: {exc}", file=sys.stderr)
        return 1


def _act(args: argparse.Namespace, config: Config, keys: LoginKeys) -> int:
    if args.action == "issue":
        ttl = parse_duration(args.ttl, "--ttl")
        issued = keys.issue(args.user, ttl)
        server = args.server or config.local_address
        if args.kubernetes_secret:
            sys.stdout.write(kubernetes_secret(args.kubernetes_secret, server, issued))
        elif args.docker_config:
            sys.stdout.write(docker_config(server, issued) + "\n")
        else:
            expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(issued.expires_at))
            print(f"username: {issued.user}\npassword: {issued.password}\nexpires:  {expires}\nid:       {issued.jti}")
        return 0
    if args.action == "revoke":
        keys.revoke(args.jti)
        print(f"revoked {args.jti}")
        return 0
    if args.action == "rotate":
        print(f"new signing key {keys.rotate()}")
        return 0
    if args.action == "drop":
        if not keys.drop(args.kid):
            print(f"mirror credentials: no key {args.kid}", file=sys.stderr)
            return 1
        print(f"dropped key {args.kid}")
        return 0
    for key in keys.signing_keys():
        created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(key.get("created", 0)))
        print(f"{key['kid']}  created {created}")
    return 0
