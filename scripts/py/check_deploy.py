#!/usr/bin/env python3
"""Checks the deployment files: compose.yaml, .env.example, deploy/k8s/*.yaml,
deploy/sweeps/*.toml and the files they mount or build.

  check_deploy.py --trainer PATH --exporter PATH   everything (the Rust test tests/tests/deploy_files.rs)
  check_deploy.py --skip-programs                  everything but the programs' --help
  check_deploy.py --self-test [--trainer P --exporter P]
                                                   feeds itself broken copies and asserts that
                                                   each is caught

What is checked:
- compose.yaml against the Compose specification's JSON schema (the copy vendored by
  the check-jsonschema package), then `docker-compose config -q` (Debian's docker-compose
  package, or a `docker compose` plugin) with .env.example as the env file and every
  profile on; build contexts, Dockerfiles, their COPY sources and bind-mounted files exist.
- .env.example defines every variable compose.yaml interpolates, and nothing else.
- deploy/k8s/*.yaml against the Kubernetes JSON schemas of one fixed version, strict
  (kubernetes-validate, which ships them: no network).
- No secret is committed: secret-looking names (PASSWORD, SECRET, TOKEN, ...) carry an
  interpolation, a valueFrom, a file path or an obvious placeholder (change-me); no URL
  holds a literal password; no private key or AWS access key id appears in any file; .env
  and keys/ are git-ignored.
- Every `trainer ...` / `exporter ...` invocation in compose.yaml (commands, and each
  service's x-examples) and in the Kubernetes manifests uses only subcommands and flags
  that the program's --help lists, and every EDGECP_* variable given to it is one that
  the invoked subcommand reads (clap's `[env: NAME=]` markers).
- deploy/sweeps/*.toml follow the sweep spec format (see deploy/sweeps/reference-e.toml).

Each problem is printed as `FILE: WHERE: what is wrong`; the exit status is 1 when there is
any, 2 on wrong usage.
"""

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

K8S_VERSION = "1.33.0"
COMPOSE = "compose.yaml"
ENV_EXAMPLE = ".env.example"
K8S_GLOB = "deploy/k8s/*.yaml"
SWEEPS_GLOB = "deploy/sweeps/*.toml"
# Files scanned for committed key material, besides the ones above.
TEXT_GLOBS = ["Dockerfile", ".dockerignore", "deploy/**/*"]
PROGRAMS = ("trainer", "exporter")
# Leading tokens that run the real program: tini as PID 1.
WRAPPERS = {"tini", "--"}
# Bind-mount sources a user creates (git-ignored): their absence is not a problem.
USER_CREATED = ("keys",)
# Variables of compose itself, allowed in .env.example without being interpolated.
COMPOSE_OWN = ("COMPOSE_", "DOCKER_")

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY|SIGNING_KEY", re.I)
PLACEHOLDER = re.compile(r"change[-_ ]?me|replace|placeholder|example|your[-_]|xxxx|<[a-z_-]+>", re.I)
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:([^@/\s]+)@", re.I)
KEY_MATERIAL = [
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"), "a PEM private key"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
]
INTERPOLATION = re.compile(
    r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONFIG_KEY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


_CLI_VERSION = {}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, file, where, what):
        self.items.append((file, where, what))

    def lines(self):
        return [f"{f}: {w}: {m}" if w else f"{f}: {m}" for f, w, m in self.items]


# ---------------------------------------------------------------------------- YAML


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (compose does too)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]


def strings(value, path=()):
    """Every string in a parsed document, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, path + (str(k),))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, path + (str(i),))


def dotted(path):
    return ".".join(path)


# ------------------------------------------------------------------ interpolation


def referenced_variables(text):
    """(name, op) of each variable a compose string interpolates; `$$` is a literal `$`."""
    text = text.replace("$$", "")
    out = []
    for m in INTERPOLATION.finditer(text):
        if m.group("braced"):
            out.append((m.group("braced"), m.group("op") or ""))
            # a default may itself interpolate: ${A:-${B}}
            out.extend(referenced_variables(m.group("arg") or ""))
        else:
            out.append((m.group("plain"), ""))
    return out


def interpolate(text, env):
    """Compose-style interpolation with `env` (enough for paths and images)."""

    def one(m):
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op") or "", m.group("arg") or ""
        value = env.get(name)
        if op in (":-",) and not value:
            return interpolate(arg, env)
        if op == "-" and value is None:
            return interpolate(arg, env)
        return value or ""

    parts = text.split("$$")
    return "$".join(INTERPOLATION.sub(one, p) for p in parts)


def only_interpolation(value):
    """True for values made of variables only (`${X}`, `${X:?message}`, `$(X)`)."""
    rest = INTERPOLATION.sub("", value.replace("$$", ""))
    rest = re.sub(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", "", rest)
    return value != "" and rest.strip() == ""


def harmless_literal(value):
    if value is None or isinstance(value, (bool, int, float)):
        return True
    value = str(value)
    return (
        value == ""
        or only_interpolation(value)
        or value.startswith(("/", "./", "../", "~/"))
        or bool(PLACEHOLDER.search(value))
    )


# ------------------------------------------------------------------ program help


class HelpError(Exception):
    pass


class Help:
    """What clap's --help of one (sub)command says: flags, env variables, subcommands."""

    def __init__(self, text):
        self.text = text
        self.longs = {}  # name -> takes a value
        self.shorts = {}  # letter -> takes a value
        self.envs = {}  # EDGECP_X -> --flag
        self.subcommands = []
        self.env_prefixes = set(re.findall(r"\b(EDGECP_[A-Z0-9]+(?:_[A-Z0-9]+)*__)", text))
        section = None
        current = None  # the option whose description follows
        block = []

        def flush():
            if current is not None:
                joined = " ".join(" ".join(block).split())
                # `[env: NAME=VALUE]`, or `[env: NAME]` with hide_env_values
                for env in re.findall(r"\[env: ?([A-Za-z_][A-Za-z0-9_]*)[=\]]", joined):
                    self.envs[env] = current

        for line in text.splitlines():
            header = re.match(r"^([A-Za-z][A-Za-z0-9 ()_-]*):\s*(.*)$", line)
            if header and not line.startswith(" "):
                flush()
                current, block = None, []
                name = header.group(1).lower()
                section = "usage" if name == "usage" else "commands" if name in ("commands", "subcommands") else "arguments" if name == "arguments" else "options"
                continue
            if section == "commands":
                m = re.match(r"^  (\S+)", line)
                if m and m.group(1) != "help":
                    self.subcommands.append(m.group(1))
                continue
            if section == "arguments":
                m = re.match(r"^ {2,6}([<\[][^>\]]+[>\]])(.*)$", line)
                if m:
                    flush()
                    current, block = m.group(1), [m.group(2)]
                else:
                    block.append(line)
                continue
            if section != "options":
                continue
            m = re.match(r"^ {2,6}(?:-(?P<short>[A-Za-z0-9])(?:,\s*|\s+|$))?(?:--(?P<long>[A-Za-z0-9][A-Za-z0-9_-]*))?(?P<rest>.*)$", line)
            if m and (m.group("short") or m.group("long")) and not line.strip().startswith("[") and (m.group("long") or not m.group("rest")[:1].isalpha()):
                flush()
                rest = m.group("rest")
                takes = bool(re.match(r"^(?:=|\s)?\[?=?<", rest))
                if m.group("long"):
                    self.longs[m.group("long")] = takes
                    current = "--" + m.group("long")
                else:
                    current = "-" + m.group("short")
                if m.group("short"):
                    self.shorts[m.group("short")] = takes
                block = [rest]
            else:
                block.append(line)
        flush()

    def flag_list(self):
        return ", ".join("--" + n for n in sorted(self.longs)) or "none"


class Program:
    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.cache = {}

    def help(self, sub):
        sub = tuple(sub)
        if sub not in self.cache:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGECP_", "AWS_"))}
            env["RUST_LOG"] = "error"
            cmd = [self.path, *sub, "--help"]
            try:
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            except OSError as e:
                raise HelpError(f"cannot run {self.path}: {e}")
            except subprocess.TimeoutExpired:
                raise HelpError(f"`{' '.join([self.name, *sub])} --help` did not finish in 120 s")
            if r.returncode != 0:
                msg = (r.stderr or r.stdout).strip().splitlines()
                raise HelpError(
                    f"`{' '.join([self.name, *sub])} --help` exited {r.returncode}: {' / '.join(msg[:3])}"
                )
            self.cache[sub] = Help(r.stdout)
        return self.cache[sub]

    def leaves(self, sub=()):
        """Every subcommand path under `sub` that has no subcommands of its own."""
        h = self.help(sub)
        if not h.subcommands:
            return [tuple(sub)]
        out = []
        for s in h.subcommands:
            out.extend(self.leaves(tuple(sub) + (s,)))
        return out


# ------------------------------------------------------------------------ checker


class Checker:
    def __init__(self, root, programs, k8s_version=K8S_VERSION, compose_cli=True, quiet=False):
        self.root = os.path.abspath(root)
        self.programs = programs  # name -> Program, or None to skip those checks
        self.k8s_version = k8s_version
        self.compose_cli = compose_cli
        self.quiet = quiet
        self.p = Problems()
        self.notes = []
        self.skips = []
        self.env_example = {}
        self.compose = None
        self.invocations = 0

    def path(self, rel):
        return os.path.join(self.root, rel)

    def note(self, text, since=None):
        """Records a passed check: when `since` (a problem count) is given, only if no
        problem was added after it."""
        if since is None or len(self.p.items) == since:
            self.notes.append(text)

    def run(self):
        self.load_env_example()
        self.check_compose()
        self.check_k8s()
        self.check_sweeps()
        self.check_key_material()
        self.check_gitignore()
        return self.p

    # ---- .env.example
    def load_env_example(self):
        f = ENV_EXAMPLE
        if not os.path.isfile(self.path(f)):
            self.p.add(f, "", "missing: it documents the variables compose.yaml needs")
            return
        for n, line in enumerate(open(self.path(f), encoding="utf-8"), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            if s.startswith("export "):
                s = s[len("export "):]
            name, eq, value = s.partition("=")
            name = name.strip()
            if not eq or not ENV_NAME.match(name):
                self.p.add(f, f"line {n}", f"not NAME=VALUE: {s!r}")
                continue
            if name in self.env_example:
                self.p.add(f, f"line {n}", f"{name} is defined twice")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            self.env_example[name] = value
            if SECRET_NAME.search(name) and not harmless_literal(value):
                self.p.add(f, f"line {n}", f"{name} has a value that looks like a real secret; use an obvious placeholder (change-me-...)")

    # ---- compose.yaml
    def check_compose(self):
        f = COMPOSE
        if not os.path.isfile(self.path(f)):
            self.p.add(f, "", "missing")
            return
        try:
            docs = load_yaml_all(self.path(f))
        except yaml.YAMLError as e:
            self.p.add(f, "", f"not valid YAML: {e}")
            return
        if len(docs) != 1 or not isinstance(docs[0], dict):
            self.p.add(f, "", "must be one YAML mapping")
            return
        doc = self.compose = docs[0]
        if "version" in doc:
            self.p.add(f, "version", "obsolete in the Compose specification: remove it")
        self.compose_schema(doc)
        self.compose_variables(doc)
        self.compose_secrets(doc)
        self.compose_files(doc)
        if self.compose_cli:
            self.compose_config()
        services = doc.get("services") or {}
        if self.programs is not None and isinstance(services, dict):
            for name, svc in services.items():
                if isinstance(svc, dict):
                    self.compose_service_programs(name, svc)

    def compose_schema(self, doc):
        import json
        from importlib import metadata, resources

        import jsonschema

        src = resources.files("check_jsonschema.builtin_schemas") / "vendor" / "compose-spec.json"
        schema = json.loads(src.read_text(encoding="utf-8"))
        validator = jsonschema.validators.validator_for(schema)(schema)
        n = 0
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
            best = jsonschema.exceptions.best_match(e.context) if e.context else e
            n += 1
            self.p.add(COMPOSE, dotted(map(str, best.absolute_path)) or "(top level)", f"schema: {best.message[:300]}")
        if not n:
            self.note(f"{COMPOSE}: Compose specification schema (compose-spec.json of check-jsonschema {metadata.version('check-jsonschema')})")

    def compose_variables(self, doc):
        mark = len(self.p.items)
        used = {}
        for path, s in strings(doc):
            for name, op in referenced_variables(s):
                used.setdefault(name, (dotted(path), op))
        for name, (where, op) in sorted(used.items()):
            if name not in self.env_example:
                self.p.add(ENV_EXAMPLE, "", f"does not define {name}, which {COMPOSE} uses at {where}")
            elif "?" in op and op.startswith(":") and self.env_example[name] == "":
                self.p.add(ENV_EXAMPLE, "", f"{name} is required by {COMPOSE} ({where}) but empty here")
        for name in sorted(self.env_example):
            if name not in used and not name.startswith(COMPOSE_OWN):
                self.p.add(ENV_EXAMPLE, "", f"defines {name}, which {COMPOSE} does not use")
        self.note(f"{ENV_EXAMPLE}: defines the {len(used)} variables {COMPOSE} interpolates, and no other", mark)

    def compose_secrets(self, doc):
        services = doc.get("services") or {}
        for sname, svc in services.items() if isinstance(services, dict) else []:
            if not isinstance(svc, dict):
                continue
            env = svc.get("environment")
            pairs = []
            if isinstance(env, dict):
                pairs = list(env.items())
            elif isinstance(env, list):
                pairs = [tuple(str(e).split("=", 1)) if "=" in str(e) else (str(e), None) for e in env]
            for k, v in pairs:
                if SECRET_NAME.search(str(k)) and not harmless_literal(v):
                    self.p.add(COMPOSE, f"service {sname}: environment {k}", "literal secret value: take it from .env (${VAR:?message})")
        for path, s in strings(doc):
            self.url_passwords(COMPOSE, dotted(path), s)
        for path, v in self.walk_pairs(doc):
            if SECRET_NAME.search(path[-1]) and path[-2:-1] != ("environment",) and not harmless_literal(v):
                self.p.add(COMPOSE, dotted(path), "literal secret value: take it from .env (${VAR:?message})")

    def walk_pairs(self, value, path=()):
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, (dict, list)):
                    yield from self.walk_pairs(v, path + (str(k),))
                elif path[:1] != ("services",) or "environment" not in path:
                    yield path + (str(k),), v
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, (dict, list)):
                    yield from self.walk_pairs(v, path + (str(i),))

    def url_passwords(self, file, where, s):
        for m in URL_PASSWORD.finditer(s):
            pw = m.group(1)
            if not (only_interpolation(pw) or PLACEHOLDER.search(pw) or pw.isupper()):
                self.p.add(file, where, f"URL with a literal password ({m.group(0)[:40]}...): interpolate it")

    def compose_files(self, doc):
        env = dict(self.env_example)
        services = doc.get("services") or {}
        for sname, svc in services.items() if isinstance(services, dict) else []:
            if not isinstance(svc, dict):
                continue
            build = svc.get("build")
            if isinstance(build, str):
                build = {"context": build}
            if isinstance(build, dict):
                ctx = interpolate(str(build.get("context", ".")), env)
                ctx_abs = os.path.normpath(os.path.join(self.root, ctx))
                dockerfile = interpolate(str(build.get("dockerfile", "Dockerfile")), env)
                df_abs = os.path.normpath(os.path.join(ctx_abs, dockerfile))
                if not os.path.isdir(ctx_abs):
                    self.p.add(COMPOSE, f"service {sname}: build.context", f"{ctx} does not exist")
                elif not os.path.isfile(df_abs):
                    self.p.add(COMPOSE, f"service {sname}: build.dockerfile", f"{os.path.relpath(df_abs, self.root)} does not exist")
                else:
                    self.dockerfile_sources(sname, ctx_abs, df_abs)
            for i, vol in enumerate(svc.get("volumes") or []):
                source = None
                if isinstance(vol, str):
                    parts = vol.split(":")
                    if len(parts) >= 2:
                        source = parts[0]
                elif isinstance(vol, dict) and vol.get("type") == "bind":
                    source = vol.get("source")
                if source is None:
                    continue
                source = interpolate(str(source), env)
                if source.startswith((".", "/")):
                    self.bind_source(f"service {sname}: volumes.{i}", source)
        for kind in ("secrets", "configs"):
            for name, spec in (doc.get(kind) or {}).items():
                if isinstance(spec, dict) and "file" in spec:
                    self.bind_source(f"{kind}.{name}.file", interpolate(str(spec["file"]), env))

    def bind_source(self, where, source):
        rel = os.path.relpath(os.path.normpath(os.path.join(self.root, source)), self.root)
        if rel.split(os.sep)[0] in USER_CREATED:
            return
        if not os.path.exists(os.path.join(self.root, rel)):
            self.p.add(COMPOSE, where, f"{source} does not exist")

    def dockerfile_sources(self, sname, ctx, dockerfile):
        rel_df = os.path.relpath(dockerfile, self.root)
        logical, start, buf = [], None, ""  # (first line number, instruction with continuations joined)
        for n, raw in enumerate(open(dockerfile, encoding="utf-8").read().splitlines(), 1):
            if start is None:
                if not raw.strip() or raw.lstrip().startswith("#"):
                    continue
                start, buf = n, ""
            elif raw.lstrip().startswith("#"):
                continue  # a comment inside a continued instruction
            buf += " " + raw.rstrip().removesuffix("\\")
            if not raw.rstrip().endswith("\\"):
                logical.append((start, buf))
                start = None
        instructions = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                        "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}
        for n, line in logical:
            tokens = line.split()
            if tokens[0].upper() not in instructions:
                self.p.add(rel_df, f"line {n}", f"unknown instruction {tokens[0]!r}")
                continue
            if tokens[0].upper() not in ("COPY", "ADD"):
                continue
            args = [t for t in tokens[1:] if not t.startswith("--")]
            if any(t.startswith("--from") for t in tokens[1:]) or len(args) < 2 or args[0].startswith("["):
                continue
            for src in args[:-1]:
                if any(c in src for c in "*?[") or src.startswith(("http://", "https://")):
                    continue
                if not os.path.exists(os.path.join(ctx, src)):
                    self.p.add(rel_df, f"line {n}", f"{tokens[0]} source {src} does not exist in the build context of service {sname}")

    def compose_cli_command(self):
        exe = shutil.which("docker-compose")
        if exe:
            return [exe]
        docker = shutil.which("docker")
        if docker:
            r = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
            if r.returncode == 0:
                return [docker, "compose"]
        return None

    def compose_config(self):
        cmd = self.compose_cli_command()
        if cmd is None:
            self.p.add(COMPOSE, "docker-compose config", "no docker-compose (apt-get install docker-compose; scripts/test.sh does) and no `docker compose` plugin; --no-compose-cli skips this check")
            return
        if not os.path.isfile(self.path(ENV_EXAMPLE)):
            return
        key = tuple(cmd)
        if key not in _CLI_VERSION:
            _CLI_VERSION[key] = subprocess.run(cmd + ["version", "--short"], capture_output=True, text=True).stdout.strip()
        version = _CLI_VERSION[key]
        profiles = set()
        for svc in (self.compose.get("services") or {}).values():
            if isinstance(svc, dict):
                profiles.update(svc.get("profiles") or [])
        used = {n for _, s in strings(self.compose) for n, _ in referenced_variables(s)}
        env = {k: v for k, v in os.environ.items() if k not in used and not k.startswith(COMPOSE_OWN)}
        args = ["--project-directory", self.root, "-f", self.path(COMPOSE), "--env-file", self.path(ENV_EXAMPLE)]
        for p in sorted(profiles):
            args += ["--profile", p]
        r = subprocess.run(cmd + args + ["config", "-q"], env=env, capture_output=True, text=True, cwd=self.root, timeout=300)
        if r.returncode != 0:
            msg = " ".join((r.stderr + r.stdout).split())
            self.p.add(COMPOSE, "docker-compose config", f"{' '.join(os.path.basename(c) for c in cmd)} {version} refuses it: {msg[:800]}")
        else:
            self.note(f"{COMPOSE}: `{' '.join(os.path.basename(c) for c in cmd)} config -q` ({version}; --env-file {ENV_EXAMPLE}, profiles: {', '.join(sorted(profiles)) or 'none'})")

    # ---- programs
    def compose_service_programs(self, name, svc):
        where = f"service {name}"
        entry = svc.get("entrypoint")
        command = svc.get("command")
        tokens = self.tokens(entry) + self.tokens(command)
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(str(e).split("=", 1) if "=" in str(e) else (str(e), "") for e in env)
        resolved = self.check_invocation(COMPOSE, where, tokens, env_names=list(env))
        prefix = self.tokens(entry)
        for i, example in enumerate(svc.get("x-examples") or []):
            if resolved is None and not prefix:
                self.p.add(COMPOSE, f"{where}: x-examples.{i}", "examples need an entrypoint that runs trainer or exporter")
                continue
            ex_tokens = prefix + shlex.split(str(example)) if prefix else [resolved[0]] + shlex.split(str(example))
            self.check_invocation(COMPOSE, f"{where}: x-examples.{i} ({example})", ex_tokens, env_names=None)

    @staticmethod
    def tokens(value):
        if value is None:
            return []
        if isinstance(value, list):
            return [str(v) for v in value]
        return shlex.split(str(value))

    def check_invocation(self, file, where, tokens, env_names):
        """Checks one command line; returns (program, subcommand path) or None when it does
        not run one of our programs."""
        i = 0
        while i < len(tokens) and os.path.basename(tokens[i]) in WRAPPERS:
            i += 1
        if i >= len(tokens) or os.path.basename(tokens[i]) not in PROGRAMS:
            return None
        prog_name = os.path.basename(tokens[i])
        prog = self.programs.get(prog_name)
        if prog is None:
            return None
        self.invocations += 1
        args = tokens[i + 1:]
        sub = ()
        try:
            h = prog.help(sub)
            j = 0
            while j < len(args):
                a = args[j]
                shown = " ".join((prog_name,) + sub)
                if a == "--":
                    break
                if a.startswith("--"):
                    name, eq, _ = a[2:].partition("=")
                    if name not in h.longs:
                        self.p.add(file, where, f"`{shown}` has no flag --{name} (its flags: {h.flag_list()})")
                    elif h.longs[name] and not eq:
                        if j + 1 >= len(args) or args[j + 1].startswith("-"):
                            self.p.add(file, where, f"--{name} of `{shown}` needs a value")
                        else:
                            j += 1
                    elif not h.longs[name] and eq:
                        self.p.add(file, where, f"--{name} of `{shown}` takes no value")
                elif a.startswith("-") and len(a) > 1 and not a[1].isdigit():
                    letter = a[1]
                    if letter not in h.shorts:
                        self.p.add(file, where, f"`{shown}` has no flag -{letter}")
                    elif h.shorts[letter] and len(a) == 2:
                        if j + 1 >= len(args):
                            self.p.add(file, where, f"-{letter} of `{shown}` needs a value")
                        else:
                            j += 1
                elif h.subcommands:
                    if a not in h.subcommands:
                        self.p.add(file, where, f"`{shown}` has no subcommand {a!r} (it has: {', '.join(h.subcommands)})")
                        return None
                    sub = sub + (a,)
                    h = prog.help(sub)
                j += 1
            if env_names is not None:
                self.check_env(file, where, prog, sub, env_names)
        except HelpError as e:
            self.p.add(file, where, str(e))
            return None
        return prog_name, sub

    def check_env(self, file, where, prog, sub, names):
        leaves = prog.leaves(sub)
        reads, prefixes = {}, set()
        for leaf in leaves:
            h = prog.help(leaf)
            for env, flag in h.envs.items():
                reads.setdefault(env, (leaf, flag))
            prefixes |= h.env_prefixes
        shown = " ".join((prog.name,) + sub)
        for name in names:
            name = str(name)
            if not name.startswith("EDGECP_") or name in reads or name.startswith(tuple(prefixes)):
                continue
            scope = f"`{shown}`" if len(leaves) == 1 else f"any subcommand of `{shown}`"
            known = ", ".join(sorted(reads)) or "none"
            self.p.add(file, where, f"{name} is not read by {scope} (it reads: {known})")

    # ---- Kubernetes
    def check_k8s(self):
        import kubernetes_validate
        from importlib import metadata

        files = sorted(glob.glob(self.path(K8S_GLOB)))
        if not files:
            self.p.add("deploy/k8s", "", "no manifest (*.yaml)")
        for path in files:
            rel = os.path.relpath(path, self.root)
            try:
                docs = load_yaml_all(path)
            except yaml.YAMLError as e:
                self.p.add(rel, "", f"not valid YAML: {e}")
                continue
            mark = len(self.p.items)
            config_maps = {}
            names = []
            for k, doc in enumerate(docs):
                if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                    self.p.add(rel, f"document {k + 1}", "not a Kubernetes resource (kind, apiVersion)")
                    continue
                label = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"
                names.append(label)
                try:
                    kubernetes_validate.validate(doc, self.k8s_version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    at = dotted(map(str, e.path)) or "(top level)"
                    self.p.add(rel, f"{label}: {at}", f"Kubernetes {e.version} schema (strict): {e.message[:300]}")
                except kubernetes_validate.SchemaNotFoundError:
                    self.p.add(rel, label, f"no schema for kind {doc['kind']} in {doc['apiVersion']} (Kubernetes {self.k8s_version})")
                except kubernetes_validate.VersionNotSupportedError:
                    self.p.add(rel, label, f"kubernetes-validate has no schemas for Kubernetes {self.k8s_version}")
                    return
                if doc["kind"] == "ConfigMap":
                    config_maps[(doc.get("metadata") or {}).get("name")] = doc.get("data") or {}
                self.k8s_secrets(rel, label, doc)
            for doc in docs:
                if isinstance(doc, dict) and self.programs is not None:
                    self.k8s_programs(rel, doc, config_maps)
            if names:
                self.note(f"{rel}: Kubernetes {self.k8s_version} schemas, strict (kubernetes-validate {metadata.version('kubernetes-validate')}): {', '.join(names)}", mark)

    def k8s_secrets(self, rel, label, doc):
        for path, s in strings(doc):
            self.url_passwords(rel, f"{label}: {dotted(path)}", s)
        if doc.get("kind") == "Secret":
            import base64

            for field in ("data", "stringData"):
                for k, v in (doc.get(field) or {}).items():
                    value = str(v)
                    if field == "data":
                        try:
                            value = base64.b64decode(value).decode("utf-8", "replace")
                        except ValueError:
                            pass
                    if not harmless_literal(value):
                        self.p.add(rel, f"{label}: {field}.{k}", "a Secret with a real-looking value: commit placeholders only, or create the Secret with kubectl")

        def walk(value, path):
            if isinstance(value, dict):
                if isinstance(value.get("name"), str) and "value" in value and SECRET_NAME.search(value["name"]):
                    if not harmless_literal(value["value"]):
                        self.p.add(rel, f"{label}: {dotted(path)}", f"{value['name']} has a literal value: use valueFrom.secretKeyRef")
                for k, v in value.items():
                    walk(v, path + (str(k),))
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    walk(v, path + (str(i),))

        walk(doc, ())

    def k8s_programs(self, rel, doc, config_maps):
        label = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
        for path, spec in self.pod_specs(doc):
            for group in ("initContainers", "containers"):
                for c in spec.get(group) or []:
                    if not isinstance(c, dict):
                        continue
                    names = [e.get("name") for e in c.get("env") or [] if isinstance(e, dict)]
                    for ef in c.get("envFrom") or []:
                        ref = (ef or {}).get("configMapRef") or {}
                        names += [(ef.get("prefix") or "") + k for k in config_maps.get(ref.get("name"), {})]
                    tokens = self.tokens(c.get("command")) + self.tokens(c.get("args"))
                    where = f"{label}: {path}.{group}[{c.get('name')}]"
                    self.check_invocation(rel, where, tokens, env_names=[n for n in names if n])

    @staticmethod
    def pod_specs(doc):
        spec = doc.get("spec") or {}
        if doc.get("kind") == "Pod":
            yield "spec", spec
        if doc.get("kind") == "CronJob":
            spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
            yield "spec.jobTemplate.spec.template.spec", (spec.get("template") or {}).get("spec") or {}
        elif "template" in spec:
            yield "spec.template.spec", (spec.get("template") or {}).get("spec") or {}

    # ---- sweep specs
    def check_sweeps(self):
        mark = len(self.p.items)
        files = sorted(glob.glob(self.path(SWEEPS_GLOB)))
        if not files:
            self.p.add("deploy/sweeps", "", "no sweep spec (*.toml)")
        for path in files:
            rel = os.path.relpath(path, self.root)
            try:
                with open(path, "rb") as f:
                    spec = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                self.p.add(rel, "", f"not valid TOML: {e}")
                continue
            before = len(self.p.items)
            self.sweep_spec(rel, spec)
            for key, value in spec.items():
                for path_, s in strings(value, (key,)):
                    self.url_passwords(rel, dotted(path_), s)
            if self.programs is not None and len(self.p.items) == before:
                self.sweep_dry_run(rel, path, spec)
        if files:
            self.note(f"deploy/sweeps: {len(files)} sweep specs follow the format ({', '.join(os.path.basename(f) for f in files)})", mark)

    def sweep_dry_run(self, rel, path, spec):
        """`trainer sweep --spec FILE --dry-run`: the program itself builds and validates
        every trial's configuration (keys, values, ranges) without writing anything."""
        prog = self.programs.get("trainer")
        try:
            h = prog.help(("sweep",))
        except HelpError as e:
            self.p.add(rel, "trainer sweep --dry-run", str(e))
            return
        if "dry-run" not in h.longs:
            self.skips.append(f"{rel}: `trainer sweep --dry-run` (the program has no --dry-run)")
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGECP_", "AWS_"))}
        env["RUST_LOG"] = "error"
        with tempfile.TemporaryDirectory(prefix="check-deploy-sweep-") as tmp:
            cmd = [prog.path, "--registry", f"sqlite://{tmp}/registry.db?mode=rwc", "sweep", "--spec", path, "--dry-run"]
            if "dataset" not in spec:
                cmd += ["--data", "s3://edgecp/datasets"]
            try:
                r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.p.add(rel, "trainer sweep --dry-run", f"did not run: {e}")
                return
        if r.returncode != 0:
            msg = " / ".join((r.stderr or r.stdout).strip().splitlines()[-4:])
            self.p.add(rel, "trainer sweep --dry-run", f"refused (exit {r.returncode}): {msg[:600]}")
        else:
            self.note(f"{rel}: `trainer sweep --spec {os.path.basename(path)} --dry-run` accepts every trial")

    def sweep_spec(self, rel, spec):
        add = lambda where, what: self.p.add(rel, where, what)  # noqa: E731
        known = {"name", "experiment", "dataset", "method", "trials", "seed", "preset", "base", "grid", "random"}
        for k in spec:
            if k not in known:
                add(k, f"unknown key (a spec has: {', '.join(sorted(known))})")
        if not isinstance(spec.get("experiment"), str) or not spec.get("experiment"):
            add("experiment", "required: a non-empty string")
        for k in ("name", "dataset"):
            if k in spec and (not isinstance(spec[k], str) or not spec[k]):
                add(k, "must be a non-empty string")
        if "preset" in spec and spec["preset"] not in ("default", "reference"):
            add("preset", f"must be \"default\" or \"reference\", not {spec['preset']!r}")
        if "seed" in spec and (not isinstance(spec["seed"], int) or isinstance(spec["seed"], bool) or spec["seed"] < 0):
            add("seed", "a non-negative integer")
        method = spec.get("method", "grid")
        if method not in ("grid", "random"):
            add("method", f"must be \"grid\" or \"random\", not {method!r}")
        scalar = (str, int, float, bool)

        def key_ok(table, k):
            if not CONFIG_KEY.match(k):
                add(f"{table}.{k}", "not a configuration key (section.key, lower case)")

        base = spec.get("base", {})
        if not isinstance(base, dict):
            add("base", "must be a table")
            base = {}
        for k, v in base.items():
            key_ok("base", k)
            if not isinstance(v, scalar):
                add(f"base.{k}", "must be a string, number or boolean")
        grid = spec.get("grid")
        rand = spec.get("random")
        if method == "grid":
            if "trials" in spec:
                add("trials", "random search only")
            if rand is not None:
                add("random", "method is \"grid\": this table would be ignored")
            if not isinstance(grid, dict) or not grid:
                add("grid", "method \"grid\" needs a [grid] table with at least one key")
                grid = {}
            for k, v in grid.items():
                key_ok("grid", k)
                if not isinstance(v, list) or not v or not all(isinstance(x, scalar) for x in v):
                    add(f"grid.{k}", "must be a non-empty list of strings, numbers or booleans")
        if method == "random":
            t = spec.get("trials")
            if not isinstance(t, int) or isinstance(t, bool) or t < 1:
                add("trials", "method \"random\" needs trials = N (N >= 1)")
            if grid is not None:
                add("grid", "method is \"random\": this table would be ignored")
            if not isinstance(rand, dict) or not rand:
                add("random", "method \"random\" needs a [random] table with at least one key")
                rand = {}
            for k, v in rand.items():
                key_ok("random", k)
                self.distribution(rel, f"random.{k}", v)

    def distribution(self, rel, where, v):
        add = lambda what: self.p.add(rel, where, what)  # noqa: E731
        forms = "{ log_uniform = [LOW, HIGH] }, { uniform = [LOW, HIGH] }, { int = [LOW, HIGH] } or { choice = [...] }"
        if not isinstance(v, dict) or len(v) != 1:
            add(f"must be one of {forms}")
            return
        (kind, args), = v.items()
        number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
        if kind == "choice":
            if not isinstance(args, list) or not args or not all(isinstance(x, (str, int, float, bool)) for x in args):
                add("choice needs a non-empty list of values")
        elif kind in ("log_uniform", "uniform", "int"):
            if not isinstance(args, list) or len(args) != 2 or not all(number(x) for x in args):
                add(f"{kind} needs [LOW, HIGH]")
            elif not args[0] <= args[1]:
                add(f"{kind}: LOW must not exceed HIGH")
            elif kind == "log_uniform" and args[0] <= 0:
                add("log_uniform: LOW must be > 0")
            elif kind == "int" and not all(isinstance(x, int) for x in args):
                add("int: LOW and HIGH must be integers")
        else:
            add(f"unknown distribution {kind!r}: use {forms}")

    # ---- key material, .gitignore
    def check_key_material(self):
        mark = len(self.p.items)
        files = {COMPOSE, ENV_EXAMPLE}
        for pattern in [K8S_GLOB, SWEEPS_GLOB] + TEXT_GLOBS:
            for p in glob.glob(self.path(pattern), recursive=True):
                if os.path.isfile(p):
                    files.add(os.path.relpath(p, self.root))
        n = 0
        for rel in sorted(files):
            path = self.path(rel)
            if not os.path.isfile(path):
                continue
            n += 1
            text = open(path, encoding="utf-8", errors="replace").read()
            for pattern, what in KEY_MATERIAL:
                for m in pattern.finditer(text):
                    line = text.count("\n", 0, m.start()) + 1
                    self.p.add(rel, f"line {line}", f"contains {what}: never commit keys (git-ignored keys/, .env, or a secret store)")
        self.note(f"key material: no private key or AWS access key id in {n} files", mark)

    def check_gitignore(self):
        if shutil.which("git") is None:
            return
        r = subprocess.run(["git", "-C", self.root, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        if r.returncode != 0 or os.path.realpath(r.stdout.strip()) != os.path.realpath(self.root):
            return
        mark = len(self.p.items)
        for rel in (".env", "keys/signing.key"):
            r = subprocess.run(["git", "-C", self.root, "check-ignore", "-q", "--no-index", rel])
            if r.returncode != 0:
                self.p.add(".gitignore", "", f"{rel} is not ignored: a real one could be committed")
            r = subprocess.run(["git", "-C", self.root, "ls-files", "--error-unmatch", rel], capture_output=True)
            if r.returncode == 0:
                self.p.add(rel, "", "is committed: remove it from git (it holds secrets)")
        self.note(".gitignore: .env and keys/ are ignored, and not committed", mark)


# ---------------------------------------------------------------------- self-test

FAKE_HELP = {
    ("trainer",): """Train siamese embedding networks and calibrate inductive conformal predictors (ICP)
for traffic-sign recognition.

Usage: trainer [OPTIONS] <COMMAND>

Commands:
  ingest  Read images (official GTSRB layout, compact u8 files, or synthetic signs), resize,
          split by track and write a versioned dataset to a directory or object-store URL
  train   Train one trial (siamese embedding network), calibrate and evaluate its conformal
          predictor, and record everything in the run registry
  runs    List and inspect recorded runs
  best    The best finished run by a validation metric (plain SQL over the registry) and its
          newest bundle
  sweep   Record a sweep and its trials in the registry
  worker  Take trials from the registry and run them
  help    Print this message or the help of the given subcommand(s)

Options:
      --registry <REGISTRY>
          Run registry URL: `sqlite://FILE?mode=rwc` (embedded default) or
          `mysql://USER:PASSWORD@HOST:PORT/DB`.

          [env: EDGECP_REGISTRY=]
          [default: sqlite://runs/registry.db?mode=rwc]

  -h, --help
          Print help (see a summary with '-h')

  -V, --version
          Print version
""",
    ("trainer", "worker"): """Take trials from the registry and run them

Usage: trainer worker [OPTIONS]

Options:
      --sweep <SWEEP>
          Only trials of this sweep (name or id)

      --registry <REGISTRY>
          Run registry URL: `sqlite://FILE?mode=rwc` (embedded default) or
          `mysql://USER:PASSWORD@HOST:PORT/DB`.

          [env: EDGECP_REGISTRY]
          [default: sqlite://runs/registry.db?mode=rwc]

      --exit-when-done
          Exit once the sweep has no trial left

      --artifacts <ARTIFACTS>
          Artifact location, a directory or a URL

          [env: EDGECP_ARTIFACTS=]
          [default: runs/artifacts]

      --bundles <BUNDLES>
          Where bundles are uploaded

          [env: EDGECP_BUNDLES=]

      --data <DATA>
          Dataset of trials whose sweep names none

          [env: EDGECP_DATASET=]

      --mlflow <URL>
          Also log to this MLflow tracking server

          [env: EDGECP_MLFLOW=]

      --key <KEY>
          Private signing key of the bundles

          [env: EDGECP_SIGNING_KEY=]
          [default: keys/signing.key]

      --max-trials <N>
          Stop after this many trials

      --no-bundle
          Do not bundle finished trials

      --lease-secs <SECS>
          Lease of a claimed trial, renewed while it runs

          [default: 300]

      --poll-secs <SECS>
          Wait between looks for work

          [default: 10]

  -h, --help
          Print help (see a summary with '-h')
""",
    ("trainer", "sweep"): """Record a sweep and its trials in the registry

Usage: trainer sweep [OPTIONS]

Options:
      --spec <FILE>          Sweep spec (TOML)
      --name <NAME>          Sweep name
      --data <DATA>          Dataset when the spec names none [env: EDGECP_DATASET=]
      --experiment <EXPERIMENT>
                             Experiment instead of the spec's
      --dry-run              Print the trials without writing anything
      --show <NAME>          Show the trials of an existing sweep
      --registry <REGISTRY>  Run registry URL [env: EDGECP_REGISTRY=] [default:
                             sqlite://runs/registry.db?mode=rwc]
      --json                 Print one JSON object (the last line)
  -h, --help                 Print help
""",
    ("trainer", "ingest"): """Read images and write a versioned dataset

Usage: trainer ingest [OPTIONS] --source <SOURCE> --out <OUT>

Options:
      --source <SOURCE>      gtsrb:PATH | u8:PATH | synthetic [env: EDGECP_SOURCE=]
      --out <OUT>            Output directory or object-store URL [env: EDGECP_DATASETS=]
      --side <SIDE>          Side S of the square images [default: 32]
      --roi                  Crop to the region of interest
      --registry <REGISTRY>  Run registry URL [env: EDGECP_REGISTRY=] [default:
                             sqlite://runs/registry.db?mode=rwc]
  -h, --help                 Print help
""",
    ("trainer", "train"): """Train one trial

Usage: trainer train [OPTIONS]

Options:
      --config <CONFIG>
          Trial configuration (TOML). Precedence: file < environment
          (EDGECP_TRAIN__SECTION__KEY) < --set.

      --set <KEY=VALUE>
          Override one key

      --data <DATA>
          [env: EDGECP_DATASET=]
          [default: datasets]

      --artifacts <ARTIFACTS>
          [env: EDGECP_ARTIFACTS=]
          [default: runs/artifacts]

      --mlflow <URL>
          [env: EDGECP_MLFLOW=]

      --registry <REGISTRY>
          [env: EDGECP_REGISTRY=]
          [default: sqlite://runs/registry.db?mode=rwc]

      --json
          Print one JSON object (the last line) instead of the table

  -h, --help
          Print help (see a summary with '-h')
""",
    ("trainer", "best"): """The best finished run by a validation metric

Usage: trainer best [OPTIONS] --metric <METRIC>

Options:
      --metric <METRIC>          Final validation metric
  -e, --experiment <EXPERIMENT>  Only runs of this experiment
      --min                      Lower is better
      --json                     Print one JSON object
      --registry <REGISTRY>      Run registry URL [env: EDGECP_REGISTRY=] [default:
                                 sqlite://runs/registry.db?mode=rwc]
  -h, --help                     Print help
""",
    ("trainer", "runs"): """List and inspect recorded runs

Usage: trainer runs [OPTIONS] <COMMAND>

Commands:
  list  List runs, newest first
  show  Show one run
  help  Print this message or the help of the given subcommand(s)

Options:
      --registry <REGISTRY>  Run registry URL [env: EDGECP_REGISTRY=] [default:
                             sqlite://runs/registry.db?mode=rwc]
  -h, --help                 Print help
""",
    ("trainer", "runs", "list"): """List runs, newest first

Usage: trainer runs list [OPTIONS]

Options:
  -e, --experiment <EXPERIMENT>  Only runs of this experiment
  -n, --limit <LIMIT>            At most this many runs [default: 20]
      --json                     Print one JSON object
      --registry <REGISTRY>      Run registry URL [env: EDGECP_REGISTRY=] [default:
                                 sqlite://runs/registry.db?mode=rwc]
  -h, --help                     Print help
""",
    ("trainer", "runs", "show"): """Show one run

Usage: trainer runs show [OPTIONS] <RUN>

Arguments:
  <RUN>  Run id or a unique prefix of it

Options:
      --json                 Print one JSON object instead of text
      --registry <REGISTRY>  Run registry URL [env: EDGECP_REGISTRY=] [default:
                             sqlite://runs/registry.db?mode=rwc]
  -h, --help                 Print help
""",
    ("exporter",): """Export trained embedding networks and sign model bundles

Usage: exporter [OPTIONS] <COMMAND>

Commands:
  keygen  Generate an ed25519 signing key pair
  bundle  Export, check, sign and pack a run's bundle
  verify  Verify a bundle
  help    Print this message or the help of the given subcommand(s)

Options:
      --registry <REGISTRY>
          Run registry URL

          [env: EDGECP_REGISTRY=]
          [default: sqlite://runs/registry.db?mode=rwc]

  -h, --help
          Print help (see a summary with '-h')
""",
    ("exporter", "keygen"): """Generate an ed25519 signing key pair

Usage: exporter keygen [OPTIONS]

Options:
      --out <OUT>            Folder for the key files [default: keys]
      --name <NAME>          Base name of the key files [default: signing]
      --registry <REGISTRY>  Run registry URL [env: EDGECP_REGISTRY=] [default:
                             sqlite://runs/registry.db?mode=rwc]
  -h, --help                 Print help
""",
    ("exporter", "bundle"): """Export, check, sign and pack a run's bundle

Usage: exporter bundle [OPTIONS] --run <RUN>

Options:
      --run <RUN>
          The run: folder, weights file, or registry run id (prefix)

      --key <KEY>
          Private signing key (PKCS#8 PEM, from `exporter keygen`)

          [env: EDGECP_SIGNING_KEY=]
          [default: keys/signing.key]

      --store <STORE>
          Object-store location the bundle is uploaded to, under models/<model_id>/

          [env: EDGECP_STORE=]
          [default: runs]

      --json
          Print one JSON object (the last line)

      --registry <REGISTRY>
          [env: EDGECP_REGISTRY=]
          [default: sqlite://runs/registry.db?mode=rwc]

  -h, --help
          Print help (see a summary with '-h')
""",
    ("exporter", "verify"): """Verify a bundle

Usage: exporter verify [OPTIONS] --key <KEY> <BUNDLE>

Arguments:
  <BUNDLE>  The bundle folder

Options:
      --key <KEY>            Public key
      --json                 Print one JSON object (the last line)
      --registry <REGISTRY>  Run registry URL [env: EDGECP_REGISTRY=] [default:
                             sqlite://runs/registry.db?mode=rwc]
  -h, --help                 Print help
""",
}

FAKE_PROGRAM = '''#!{python}
# clap-style --help of {name}, for check_deploy.py --self-test
import json, sys
helps = json.loads({helps!r})
if "--dry-run" in sys.argv:
    sys.exit(0)
args = [a for a in sys.argv[1:] if a != "--help"]
key = " ".join(["{name}"] + args)
if key not in helps:
    sys.stderr.write("error: unrecognized subcommand '%s'\\n" % (args[-1] if args else ""))
    sys.exit(2)
sys.stdout.write(helps[key])
'''


def fake_programs(folder):
    import json

    progs = {}
    for name in PROGRAMS:
        helps = {" ".join(k): v for k, v in FAKE_HELP.items() if k[0] == name}
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write(FAKE_PROGRAM.format(python=sys.executable, name=name, helps=json.dumps(helps)))
        os.chmod(path, 0o755)
        progs[name] = Program(name, path)
    return progs


# (name, file, old, new, [substrings one problem line must hold all of]); new=None removes
# the file. `old` must occur in the file: the self-test says so when the files change.
CASES = [
    ("unknown flag in a compose command", COMPOSE,
     'command: ["trainer", "worker"]', 'command: ["trainer", "worker", "--no-such-flag"]',
     [COMPOSE, "trainer-worker", "--no-such-flag"]),
    ("unknown flag in a compose example", COMPOSE,
     "- sweep --spec /specs/reference-e.toml", "- sweep --spec /specs/reference-e.toml --dry-runn",
     [COMPOSE, "x-examples", "--dry-runn"]),
    ("unknown subcommand in the Kubernetes job", "deploy/k8s/trainer-worker-job.yaml",
     '"trainer", "worker",', '"trainer", "wroker",', ["trainer-worker-job.yaml", "'wroker'"]),
    ("flag without its value in the Kubernetes job", "deploy/k8s/trainer-worker-job.yaml",
     '"--sweep", "$(SWEEP)",', '"--sweep",', ["trainer-worker-job.yaml", "--sweep", "needs a value"]),
    ("EDGECP variable no program reads", COMPOSE,
     "  EDGECP_MLFLOW: http://mlflow:5000\n", "  EDGECP_MLFLOW: http://mlflow:5000\n  EDGECP_NO_SUCH_SETTING: x\n",
     [COMPOSE, "trainer-worker", "EDGECP_NO_SUCH_SETTING"]),
    ("EDGECP variable the Kubernetes worker does not read", "deploy/k8s/trainer-worker-job.yaml",
     "            - name: EDGECP_BUNDLES\n", "            - name: EDGECP_NO_SUCH_K8S_SETTING\n              value: x\n            - name: EDGECP_BUNDLES\n",
     ["trainer-worker-job.yaml", "EDGECP_NO_SUCH_K8S_SETTING"]),
    ("variable missing from .env.example", ENV_EXAMPLE,
     "\nMQTT_PASSWORD=", "\n# MQTT_PASSWORD removed=",
     [ENV_EXAMPLE, "MQTT_PASSWORD"]),
    ("unknown Kubernetes field", "deploy/k8s/trainer-worker-job.yaml",
     "  completionMode: Indexed\n", "  completionMode: Indexed\n  parallelismm: 4\n",
     ["trainer-worker-job.yaml", "parallelismm"]),
    ("Kubernetes field of the wrong type", "deploy/k8s/trainer-worker-job.yaml",
     "  completions: 4\n", "  completions: four\n", ["trainer-worker-job.yaml", "completions"]),
    ("unknown compose key", COMPOSE,
     "    image: mysql:8.4\n", "    image: mysql:8.4\n    imagee: mysql:8.4\n", [COMPOSE, "imagee"]),
    ("literal password in compose", COMPOSE,
     "      MYSQL_ROOT_PASSWORD: ${MYSQL_ROOT_PASSWORD:?", "      MYSQL_ROOT_PASSWORD: hunter2hunter2\n      X_UNUSED: ${MYSQL_ROOT_PASSWORD:?",
     [COMPOSE, "MYSQL_ROOT_PASSWORD", "literal secret"]),
    ("literal password in a URL", COMPOSE,
     "mysql://edgecp:${EDGECP_DB_PASSWORD:?", "mysql://edgecp:s3cr3tpw@mysql:3306/x#${EDGECP_DB_PASSWORD:?",
     [COMPOSE, "literal password"]),
    ("literal secret in the Kubernetes job", "deploy/k8s/trainer-worker-job.yaml",
     "            - name: RUST_LOG\n", "            - name: DB_PASSWORD\n              value: hunter2hunter2\n            - name: RUST_LOG\n",
     ["trainer-worker-job.yaml", "DB_PASSWORD", "valueFrom"]),
    ("private key committed", "deploy/mosquitto/mosquitto.conf",
     "persistence true\n", "persistence true\n# -----BEGIN PRIVATE KEY-----\n", ["mosquitto.conf", "private key"]),
    ("real-looking secret in .env.example", ENV_EXAMPLE,
     "\nMQTT_PASSWORD=change-me-mqtt", "\nMQTT_PASSWORD=Xq7rT2pL9wZ4",
     [ENV_EXAMPLE, "MQTT_PASSWORD", "placeholder"]),
    ("unknown sweep method", "deploy/sweeps/random-small.toml",
     '\nmethod = "random"', '\nmethod = "annealing"', ["random-small.toml", "annealing"]),
    ("bad sweep distribution", "deploy/sweeps/random-small.toml",
     "{ log_uniform = [1e-4, 3e-3] }", "{ log_uniform = [0, 3e-3] }", ["random-small.toml", "log_uniform"]),
    ("missing mounted file", "deploy/mysql/init.sql", None, None, [COMPOSE, "init.sql", "does not exist"]),
    ("sweep value the trainer refuses (trainer sweep --dry-run)", "deploy/sweeps/random-small.toml",
     '"batch_hard_triplet"', '"triplet"', ["random-small.toml", "trainer sweep --dry-run", "refused"]),
    ("COPY of a file the build context lacks", "deploy/mlflow/Dockerfile",
     "COPY scripts/requirements-mlflow.txt", "COPY scripts/requirements-mlflw.txt",
     ["deploy/mlflow/Dockerfile", "requirements-mlflw.txt", "does not exist"]),
    ("depends_on an unknown service (docker-compose config)", COMPOSE,
     "  adminer:\n    image: adminer:5\n    restart: unless-stopped\n    depends_on:\n      mysql:",
     "  adminer:\n    image: adminer:5\n    restart: unless-stopped\n    depends_on:\n      mysqll:",
     [COMPOSE, "docker-compose config", "mysqll"]),
]
CLI_CASES = {"depends_on an unknown service (docker-compose config)"}
# Caught only by the real trainer (the fake programs accept any sweep).
REAL_ONLY = {"sweep value the trainer refuses (trainer sweep --dry-run)"}
# What a copy needs: everything the checks read.
COPY = [COMPOSE, ENV_EXAMPLE, "Dockerfile", ".dockerignore", "deploy", "scripts/requirements-mlflow.txt"]


def copy_tree(root, dst):
    for rel in COPY:
        src = os.path.join(root, rel)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, rel))
        elif os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)) or dst, exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))


def self_test(root, real_programs, compose_cli):
    failures = []
    with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
        fakes = fake_programs(os.path.join(tmp))
        runs = [("fake clap programs", fakes)]
        if real_programs:
            runs.append(("the real programs", real_programs))
        for label, progs in runs:
            base = os.path.join(tmp, "base-" + label.split()[1])
            copy_tree(root, base)
            problems = Checker(base, progs, compose_cli=compose_cli).run().lines()
            if problems:
                failures.append(f"unbroken copy, {label}: expected no problem, got:\n    " + "\n    ".join(problems))
            else:
                print(f"self-test ok: unbroken copy passes ({label})")
        for n, (name, rel, old, new, expect) in enumerate(CASES):
            if name in CLI_CASES and not compose_cli:
                print(f"self-test skipped (--no-compose-cli): {name}")
                continue
            if name in REAL_ONLY and not real_programs:
                print(f"self-test skipped (needs --trainer and --exporter): {name}")
                continue
            case = os.path.join(tmp, f"case{n}")
            copy_tree(root, case)
            path = os.path.join(case, rel)
            if old is None:
                os.remove(path)
            else:
                text = open(path, encoding="utf-8").read()
                if old not in text:
                    failures.append(f"{name}: {rel} no longer contains {old!r}: update CASES in {__file__}")
                    continue
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text.replace(old, new, 1))
            # Program cases also run against the real programs when given: their help must
            # be parsed as well as the fake's.
            sets = [] if name in REAL_ONLY else [("fake", fakes)]
            if real_programs and (name in REAL_ONLY or any(w in name for w in ("flag", "subcommand", "EDGECP"))):
                sets.append(("real", real_programs))
            for which, progs in sets:
                lines = Checker(case, progs, compose_cli=compose_cli).run().lines()
                if any(all(e in line for e in expect) for line in lines):
                    hit = next(line for line in lines if all(e in line for e in expect))
                    print(f"self-test ok: {name} ({which} programs) -> {hit[:160]}")
                else:
                    failures.append(f"{name} ({which} programs): no problem line holds all of {expect}; got:\n    " + "\n    ".join(lines or ["(none)"]))
    for f in failures:
        print("SELF-TEST FAILED: " + f)
    print(f"self-test: {len(failures)} failures")
    return 1 if failures else 0


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."), help="repository root (default: this script's)")
    ap.add_argument("--trainer", help="the trainer binary (its --help is parsed)")
    ap.add_argument("--exporter", help="the exporter binary")
    ap.add_argument("--skip-programs", action="store_true", help="skip the checks that need the binaries")
    ap.add_argument("--no-compose-cli", action="store_true", help="skip `docker-compose config`")
    ap.add_argument("--k8s-version", default=K8S_VERSION, help=f"Kubernetes version of the schemas (default {K8S_VERSION})")
    ap.add_argument("--self-test", action="store_true", help="check broken copies of the files and assert each is caught")
    a = ap.parse_args(argv)
    root = os.path.abspath(a.root)
    if bool(a.trainer) != bool(a.exporter):
        ap.error("give both --trainer and --exporter")
    programs = None
    if a.trainer:
        for p in (a.trainer, a.exporter):
            if not os.access(p, os.X_OK):
                ap.error(f"{p} is not an executable file")
        programs = {"trainer": Program("trainer", a.trainer), "exporter": Program("exporter", a.exporter)}
    if a.self_test:
        return self_test(root, programs, compose_cli=not a.no_compose_cli)
    if programs is None and not a.skip_programs:
        ap.error("give --trainer PATH --exporter PATH (or --skip-programs)")
    c = Checker(root, programs, k8s_version=a.k8s_version, compose_cli=not a.no_compose_cli)
    problems = c.run().lines()
    for n in c.notes:
        print("ok   " + n)
    for n in c.skips:
        print("skip " + n)
    if programs is not None:
        print(f"ok   programs: {c.invocations} invocations of trainer / exporter checked against their --help" if not problems else f"     programs: {c.invocations} invocations of trainer / exporter checked against their --help")
    else:
        print("skip programs: trainer / exporter flags and EDGECP_* variables (--skip-programs)")
    if a.no_compose_cli:
        print("skip docker-compose config (--no-compose-cli)")
    for line in problems:
        print("PROBLEM " + line)
    print(f"deploy check: {len(problems)} problems" if problems else "deploy check: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
