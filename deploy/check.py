#!/usr/bin/env python3
"""Validates deploy/ and the CI workflow, offline (no cluster, no Docker
engine, no network):

1. every Kubernetes manifest against the official schemas (strict: unknown
   fields are errors);
2. a policy over the manifests: the security and production settings every
   costguard workload must keep (see `workload_problems` and friends), the
   costguard.toml embedded in each ConfigMap (keys known to
   config/costguard.example.toml, admin port on loopback, trusted_proxies,
   secrets from files), and the policy ConfigMap equal to policies/*.toml;
3. deploy/Dockerfile with hadolint;
4. .github/workflows/*.yml with jactionlint (actionlint's checks plus
   security rules) and shellcheck on the run: scripts.

  python deploy/check.py              all of the above; exit 1 on a problem
  python deploy/check.py --self-test  mutates the loaded manifests in memory
                                      and shows the policy rejects each change
"""
import copy
import ipaddress
import pathlib
import re
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
K8S_VERSION = "1.30.0"

PROXY_PORT = 8080
METRICS_PORT = 9100
# The only ports the outside of a pod may reach: costguard's proxy port and
# its read-only metrics port. The app (127.0.0.1:9000) and the admin port
# (127.0.0.1:9090) must stay unreachable.
OPEN_PORTS = {PROXY_PORT, METRICS_PORT}
# Keys the binary accepts that config/costguard.example.toml does not list
# (yet): the metrics listener another change adds.
EXTRA_CONFIG_KEYS = {"metrics": {"enabled", "listen"}}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
HPA_MIN, HPA_MAX = 3, 20


# --- loading ---------------------------------------------------------------

def load_manifests():
    """{file name: [documents]} for deploy/kubernetes/*.yaml."""
    out = {}
    for path in sorted((HERE / "kubernetes").glob("*.yaml")):
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if not out:
        sys.exit("no Kubernetes manifests found")
    return out


def check_schemas(manifests):
    count = 0
    for name, docs in manifests.items():
        for doc in docs:
            # Raises on schema violations, unknown fields and removed APIs.
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            count += 1
            print(f"ok  deploy/kubernetes/{name}: {doc['kind']}/{doc['metadata']['name']}")
    return count


def documented_config_keys():
    """{section: {keys}} from config/costguard.example.toml, commented-out
    keys and tables (`# [[sso.oidc]]`, `# token_file = ...`) included, plus
    EXTRA_CONFIG_KEYS; and the example's uncommented defaults, for types."""
    text = (ROOT / "config" / "costguard.example.toml").read_text()
    keys, section = {}, None
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^#?\s*\[\[?([a-z_][a-z0-9_.]*)\]\]?\s*(#.*)?$", s)
        if m:
            section = m.group(1)
            keys.setdefault(section, set())
            continue
        m = re.match(r"^#?\s*([a-z_][a-z0-9_]*)\s*=", s)
        if m and section:
            keys[section].add(m.group(1))
    for sec, extra in EXTRA_CONFIG_KEYS.items():
        keys.setdefault(sec, set()).update(extra)
    return keys, tomllib.loads(text)


# --- helpers ---------------------------------------------------------------

def pod_spec_of(doc):
    kind = doc["kind"]
    if kind == "Pod":
        return doc.get("metadata", {}), doc["spec"]
    if kind == "CronJob":
        t = doc["spec"]["jobTemplate"]["spec"]["template"]
    else:
        t = doc["spec"]["template"]
    return t.get("metadata", {}), t["spec"]


def selects(selector, labels):
    """Whether a matchLabels selector selects pods with these labels (an
    empty podSelector selects every pod of the namespace)."""
    if selector is None:
        return False
    ml = selector.get("matchLabels") or {}
    if selector.get("matchExpressions"):
        return False  # not used here; treated as not selecting
    return all(labels.get(k) == v for k, v in ml.items())


def host_port(addr):
    m = re.match(r"^\[?([^\]]*?)\]?:(\d+)$", addr)
    if not m:
        return None, None
    return m.group(1), int(m.group(2))


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def container_ports(containers):
    """{name: number} and {number} of every container port in the pod."""
    by_name, numbers = {}, set()
    for c in containers:
        for p in c.get("ports", []) or []:
            numbers.add(p["containerPort"])
            if p.get("name"):
                by_name[p["name"]] = p["containerPort"]
    return by_name, numbers


def resolve_port(port, by_name):
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    return by_name.get(port)


def walk_files(cfg, prefix=""):
    """(key path, value) of every `*_file` / `*_files` key in a config."""
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            path = f"{prefix}.{k}" if prefix else k
            if k.endswith("_file") and isinstance(v, str):
                yield path, v
            elif k.endswith("_files") and isinstance(v, list):
                for i, f in enumerate(v):
                    yield f"{path}[{i}]", f
            else:
                yield from walk_files(v, path)
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            yield from walk_files(v, f"{prefix}[{i}]")


def mount_for(path, mounts):
    """The volumeMount whose mountPath is the longest prefix of `path`."""
    best = None
    for m in mounts:
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


# --- the costguard.toml policy -----------------------------------------------

def config_key_problems(cfg, documented, defaults, where):
    """Unknown sections and keys, and values whose type differs from the
    example's default (a typo like `listn` or `trusted_proxies = "..."`)."""
    problems = []

    def check_table(section, table, default):
        known = documented.get(section)
        if known is None:
            problems.append(f"{where}: unknown section [{section}]")
            return
        for key, value in table.items():
            sub = f"{section}.{key}"
            if sub in documented and isinstance(value, (dict, list)):
                items = value if isinstance(value, list) else [value]
                for item in items:
                    if isinstance(item, dict):
                        check_table(sub, item, (default or {}).get(key) if isinstance(default, dict) else None)
                continue
            if key not in known:
                problems.append(f"{where}: unknown key {sub} (not in config/costguard.example.toml)")
                continue
            if isinstance(default, dict) and key in default:
                want = type(default[key])
                if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                    problems.append(f"{where}: {sub} is a {type(value).__name__}, the example's is a {want.__name__}")

    for section, table in cfg.items():
        if not isinstance(table, dict):
            problems.append(f"{where}: top-level key {section!r} outside any section")
            continue
        check_table(section, table, defaults.get(section, {}))
    return problems


def config_problems(cfg, ctx, where):
    """Deployment rules for one embedded costguard.toml, given its pod."""
    problems = []
    proxy = cfg.get("proxy", {})
    admin = cfg.get("admin", {})
    store = cfg.get("store", {})
    audit = cfg.get("audit", {})
    metrics = cfg.get("metrics", {})

    host, port = host_port(admin.get("listen", "127.0.0.1:9090"))
    if host is None or not is_loopback(host):
        problems.append(f"{where}: admin.listen {admin.get('listen')!r} is not a loopback address")
    host, _ = host_port(proxy.get("upstream", "http://127.0.0.1:9000").split("://", 1)[-1].rstrip("/"))
    if host is None or not is_loopback(host):
        problems.append(f"{where}: proxy.upstream {proxy.get('upstream')!r} is not the app on loopback in this pod")
    _, port = host_port(proxy.get("listen", "0.0.0.0:8080"))
    if port != PROXY_PORT or ctx["ports"].get("http") != PROXY_PORT:
        problems.append(f"{where}: proxy.listen port {port} and the container port 'http' must both be {PROXY_PORT}")

    tp = proxy.get("trusted_proxies", [])
    if not tp:
        problems.append(f"{where}: proxy.trusted_proxies is empty (set the ingress controller's addresses)")
    for cidr in tp:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(f"{where}: proxy.trusted_proxies entry {cidr!r} is not an address or CIDR")
            continue
        if net.prefixlen == 0:
            problems.append(f"{where}: proxy.trusted_proxies contains {cidr}: any client could pick its address")

    if metrics.get("enabled", True) is not True:
        problems.append(f"{where}: metrics.enabled is off (Prometheus scrapes the metrics port)")
    _, mport = host_port(metrics.get("listen", ""))
    if mport != METRICS_PORT or ctx["ports"].get("metrics") != METRICS_PORT:
        problems.append(f"{where}: metrics.listen {metrics.get('listen')!r} and the container port 'metrics' must both use {METRICS_PORT}")

    # The policy directory: the policies ConfigMap, mounted as a directory.
    pdir = cfg.get("policy", {}).get("dir", "policies")
    m = next((m for m in ctx["mounts"] if m["mountPath"].rstrip("/") == pdir.rstrip("/")), None)
    vol = ctx["volumes"].get(m["name"]) if m else None
    if not m or not vol or "configMap" not in vol:
        problems.append(f"{where}: policy.dir {pdir} is not a ConfigMap volume mount")
    elif m.get("subPath") or m.get("subPathExpr"):
        problems.append(f"{where}: policy.dir {pdir} is mounted with subPath: ConfigMap updates never reach it (no live reload)")
    elif vol["configMap"].get("name") != "costguard-policies":
        problems.append(f"{where}: policy.dir {pdir} mounts ConfigMap {vol['configMap'].get('name')}, not costguard-policies")

    # Secrets come from files of a mounted Secret, each key listed.
    if admin.get("token"):
        problems.append(f"{where}: admin.token inline; use admin.token_file (a mounted Secret)")
    for key, path in walk_files(cfg):
        m = mount_for(path, ctx["mounts"])
        vol = ctx["volumes"].get(m["name"]) if m else None
        if not vol or "secret" not in vol:
            problems.append(f"{where}: {key} = {path} is not in a mounted Secret")
            continue
        rel = path[len(m["mountPath"].rstrip("/")) + 1:]
        items = vol["secret"].get("items")
        if not items or rel not in {i["path"] for i in items}:
            problems.append(f"{where}: {key} = {path}: the Secret volume {m['name']} lists no item for {rel}")
    for needed in ("admin.token_file", "sso.cookie_key_file", "audit.hmac_key_file"):
        sec, key = needed.split(".")
        if not cfg.get(sec, {}).get(key):
            problems.append(f"{where}: {needed} is not set (the secret must come from the Secret, not a file costguard makes)")

    # Writable paths: inside a writable volume, below its mount point
    # (costguard chmods them 0700, which it cannot do to a mount point).
    store_path = store.get("path", "./costguard-data")
    audit_dir = audit.get("dir") or f"{store_path}/audit"
    for key, path in (("store.path", store_path), ("audit.dir", audit_dir)):
        m = mount_for(path, ctx["mounts"]) if path.startswith("/") else None
        vol = ctx["volumes"].get(m["name"]) if m else None
        writable = vol is not None and ("emptyDir" in vol or "persistentVolumeClaim" in vol or vol.get("_claim_template"))
        if not writable or m.get("readOnly"):
            problems.append(f"{where}: {key} {path} is not on a writable volume (the root filesystem is read-only)")
        elif path.rstrip("/") == m["mountPath"].rstrip("/"):
            problems.append(f"{where}: {key} {path} is a mount point; use a directory inside it")

    backend = store.get("backend", "sled")
    if backend == "postgres":
        if store.get("url"):
            problems.append(f"{where}: store.url inline; use store.url_file (a mounted Secret)")
        if not store.get("url_file"):
            problems.append(f"{where}: store.backend postgres without store.url_file")
        rl = cfg.get("rate_limit", {})
        if rl.get("backend") != "redis" or not rl.get("redis_url_file") or rl.get("redis_url"):
            problems.append(f"{where}: shared mode needs rate_limit.backend redis with redis_url_file")
    elif backend != "sled":
        problems.append(f"{where}: unknown store.backend {backend!r}")
    return problems


def paths_mounted_problems(c, cfg, volumes, where):
    """Every file and directory a costguard.toml names must be mounted into
    each container that loads it (`migrate` validates the whole file too)."""
    problems = []
    mounts = c.get("volumeMounts") or []
    named = [("policy.dir", cfg.get("policy", {}).get("dir", "policies"))] + list(walk_files(cfg))
    store_path = cfg.get("store", {}).get("path", "./costguard-data")
    named += [("store.path", store_path), ("audit.dir", cfg.get("audit", {}).get("dir") or f"{store_path}/audit")]
    for key, path in named:
        if not path.startswith("/") or not mount_for(path, mounts) or mount_for(path, mounts)["name"] not in volumes:
            problems.append(f"{where}: {key} {path} is not mounted into this container")
    return problems


# --- the workload policy -----------------------------------------------------

def container_problems(c, pod_sc, where):
    problems = []
    sc = c.get("securityContext") or {}

    def eff(key):
        return sc.get(key, pod_sc.get(key))

    if eff("runAsNonRoot") is not True:
        problems.append(f"{where}: runAsNonRoot is not true")
    for key in ("runAsUser", "runAsGroup"):
        v = eff(key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            problems.append(f"{where}: {key} must be a numeric non-zero id, is {v!r}")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        problems.append(f"{where}: privileged")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append(f"{where}: capabilities do not drop ALL")
    if caps.get("add"):
        problems.append(f"{where}: capabilities add {caps['add']}")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(part) or {}):
                problems.append(f"{where}: no resources.{part}.{r}")
    return problems


def probe_problems(c, by_name, where):
    problems = []
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            problems.append(f"{where}: no {probe} (httpGet {path})")
            continue
        if get.get("path") != path or resolve_port(get.get("port"), by_name) != PROXY_PORT:
            problems.append(f"{where}: {probe} must be GET {path} on the proxy port {PROXY_PORT}, is {get.get('path')} on {get.get('port')}")
    return problems


def is_costguard(c):
    return "costguard" in c.get("image", "") and (c.get("args") or [None])[0] == "serve"


def workload_problems(fname, doc, docs, documented, defaults, forms):
    kind, name = doc["kind"], doc["metadata"]["name"]
    where = f"{fname}: {kind}/{name}"
    problems = []
    meta, spec = pod_spec_of(doc)
    labels = meta.get("labels") or {}
    pod_sc = spec.get("securityContext") or {}
    inits = spec.get("initContainers") or []
    mains = spec.get("containers") or []
    by_name, _ = container_ports(inits + mains)

    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken is not false")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{where}: {key}")
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    for c in inits + mains:
        problems += container_problems(c, pod_sc, f"{where} container {c['name']}")

    cg_init = [c for c in inits if is_costguard(c)]
    cg_main = [c for c in mains if is_costguard(c)]
    if len(cg_init) + len(cg_main) != 1:
        problems.append(f"{where}: expected exactly one costguard container serving, found {len(cg_init) + len(cg_main)}")
        return problems
    cg = (cg_init + cg_main)[0]
    cw = f"{where} container costguard"
    if cg_init:
        forms.add("native")
        if cg.get("restartPolicy") != "Always":
            problems.append(f"{cw}: a costguard init container needs restartPolicy: Always (a native sidecar); without it the pod never starts")
    else:
        forms.add("classic")
    problems += probe_problems(cg, by_name, cw)
    if {p.get("name"): p["containerPort"] for p in cg.get("ports", [])}.get("metrics") != METRICS_PORT:
        problems.append(f"{cw}: no container port named metrics = {METRICS_PORT}")
    ann = meta.get("annotations") or {}
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(METRICS_PORT):
        problems.append(f"{where}: pod annotations prometheus.io/scrape \"true\" and prometheus.io/port \"{METRICS_PORT}\" missing")

    # The embedded costguard.toml: --config FILE in a ConfigMap mount.
    args = cg.get("args") or []
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    if kind == "StatefulSet":
        for t in doc["spec"].get("volumeClaimTemplates") or []:
            volumes[t["metadata"]["name"]] = {"name": t["metadata"]["name"], "_claim_template": True}
    mounts = cg.get("volumeMounts") or []
    ctx = {"mounts": mounts, "volumes": volumes, "ports": {p.get("name"): p["containerPort"] for p in cg.get("ports", [])}}
    cfg = None
    if "--config" in args and args.index("--config") + 1 < len(args):
        path = args[args.index("--config") + 1]
        m = mount_for(path, mounts)
        vol = volumes.get(m["name"]) if m else None
        if vol and "configMap" in vol:
            cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == vol["configMap"]["name"]), None)
            text = (cm or {}).get("data", {}).get(path.rsplit("/", 1)[1]) if cm else None
            if text is None:
                problems.append(f"{cw}: --config {path}: no such key in a ConfigMap of {fname}")
            else:
                cwhere = f"{fname}: ConfigMap/{cm['metadata']['name']} costguard.toml"
                try:
                    cfg = tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    problems.append(f"{cwhere}: not TOML: {e}")
                if cfg is not None:
                    problems += config_key_problems(cfg, documented, defaults, cwhere)
                    problems += config_problems(cfg, ctx, cwhere)
        else:
            problems.append(f"{cw}: --config {path} is not in a ConfigMap volume")
    else:
        problems.append(f"{cw}: no --config FILE")

    if cfg is not None:
        for c in inits + mains:
            if "costguard" in c.get("image", ""):
                problems += paths_mounted_problems(c, cfg, volumes, f"{where} container {c['name']}")

    # Scale, rollout, autoscaling: the shared store scales, sled does not.
    backend = (cfg or {}).get("store", {}).get("backend", "sled")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
            and d["spec"]["scaleTargetRef"].get("kind") == kind and d["spec"]["scaleTargetRef"].get("name") == name]
    if kind == "Deployment":
        if backend != "postgres":
            problems.append(f"{where}: a Deployment (several replicas) needs the shared store; store.backend is {backend!r}")
        strategy = doc["spec"].get("strategy") or {}
        ru = strategy.get("rollingUpdate") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate" or str(ru.get("maxUnavailable", "25%")) not in ("0", "0%"):
            problems.append(f"{where}: rolling update must have maxUnavailable 0 (is {ru.get('maxUnavailable', '25% by default')})")
        if str(ru.get("maxSurge", "25%")) in ("0", "0%"):
            problems.append(f"{where}: maxSurge 0 with maxUnavailable 0 cannot roll")
        if doc["spec"].get("replicas", HPA_MIN) < HPA_MIN:
            problems.append(f"{where}: replicas below {HPA_MIN}")
        if len(hpas) != 1:
            problems.append(f"{where}: expected one HorizontalPodAutoscaler targeting it, found {len(hpas)}")
        for h in hpas:
            hs = h["spec"]
            if h["apiVersion"] != "autoscaling/v2":
                problems.append(f"{where}: HPA {h['metadata']['name']} is not autoscaling/v2")
            if hs.get("minReplicas", 1) < HPA_MIN or hs.get("maxReplicas", 0) < HPA_MAX:
                problems.append(f"{where}: HPA {h['metadata']['name']} must scale at least {HPA_MIN}..{HPA_MAX} (is {hs.get('minReplicas', 1)}..{hs.get('maxReplicas')})")
            resources = {m["resource"]["name"] for m in hs.get("metrics") or [] if m.get("type") == "Resource"}
            if not {"cpu", "memory"} <= resources:
                problems.append(f"{where}: HPA {h['metadata']['name']} must scale on cpu and memory (has {sorted(resources)})")
    elif kind == "StatefulSet":
        if backend == "sled":
            if doc["spec"].get("replicas", 1) != 1:
                problems.append(f"{where}: the embedded store is one pod's: replicas must be 1")
            if hpas:
                problems.append(f"{where}: an autoscaler on an embedded-store StatefulSet splits the store")
    else:
        problems.append(f"{where}: costguard runs as a Deployment (shared store) or a StatefulSet (embedded store), not a {kind}")

    # Disruption budget.
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget" and selects(d["spec"].get("selector"), labels)]
    if not pdbs:
        problems.append(f"{where}: no PodDisruptionBudget selects its pods")
    for p in pdbs:
        if str(p["spec"].get("maxUnavailable", "")) in ("0", "0%"):
            problems.append(f"{where}: PDB {p['metadata']['name']} maxUnavailable 0 blocks every drain")

    # Network policy: only the proxy port from a namespace, only the metrics port.
    nps = [d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"].get("podSelector"), labels)]
    if not nps:
        problems.append(f"{where}: no NetworkPolicy selects its pods (every port open to the cluster)")
    admitted = set()
    for np in nps:
        nw = f"{fname}: NetworkPolicy/{np['metadata']['name']}"
        s = np["spec"]
        if "Ingress" not in (s.get("policyTypes") or ["Ingress"]):
            problems.append(f"{nw}: policyTypes without Ingress restricts nothing coming in")
        for i, rule in enumerate(s.get("ingress") or []):
            if not rule.get("from"):
                problems.append(f"{nw}: ingress rule {i} has no from: any source")
            for peer in rule.get("from") or []:
                if "ipBlock" in peer:
                    problems.append(f"{nw}: ingress rule {i} admits an ipBlock; admit namespaces")
                elif not peer.get("namespaceSelector", {}).get("matchLabels"):
                    problems.append(f"{nw}: ingress rule {i} admits a peer without a namespace (matchLabels)")
            if not rule.get("ports"):
                problems.append(f"{nw}: ingress rule {i} has no ports: every port, the admin and app ports included")
            for p in rule.get("ports") or []:
                n = resolve_port(p.get("port"), by_name)
                if p.get("endPort") or n not in OPEN_PORTS:
                    problems.append(f"{nw}: ingress rule {i} admits port {p.get('port')}{'-' + str(p['endPort']) if p.get('endPort') else ''}; only {sorted(OPEN_PORTS)} may be reachable")
                admitted.add(n)
    if nps and not OPEN_PORTS <= admitted:
        problems.append(f"{where}: the NetworkPolicy does not admit {sorted(OPEN_PORTS - admitted)} (ingress or Prometheus cut off)")

    # Services: only the proxy and metrics ports.
    for svc in (d for d in docs if d["kind"] == "Service" and selects({"matchLabels": d["spec"].get("selector") or {"-": "-"}}, labels)):
        for p in svc["spec"].get("ports") or []:
            n = resolve_port(p.get("targetPort", p.get("port")), by_name)
            if n not in OPEN_PORTS:
                problems.append(f"{fname}: Service/{svc['metadata']['name']} exposes port {p.get('targetPort', p.get('port'))}")
    return problems


def policy_problems(manifests):
    documented, defaults = documented_config_keys()
    problems, forms = [], set()
    configmaps = {}
    for fname, docs in manifests.items():
        workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
        if not workloads:
            problems.append(f"{fname}: no workload")
        for doc in workloads:
            problems += workload_problems(fname, doc, docs, documented, defaults, forms)
        for d in docs:
            if d["kind"] == "ConfigMap":
                configmaps.setdefault(d["metadata"]["name"], []).append((fname, d.get("data")))
    for form in ("native", "classic"):
        if form not in forms:
            problems.append(f"no manifest has costguard in the {form} sidecar form")
    # Same-named ConfigMaps in several files: applying both must agree.
    for name, found in configmaps.items():
        if any(data != found[0][1] for _, data in found[1:]):
            problems.append(f"ConfigMap {name} differs between {', '.join(f for f, _ in found)}")
    # The policy ConfigMap is the shipped policies/ files, byte for byte.
    shipped = {p.name: p.read_text() for p in sorted((ROOT / "policies").glob("*.toml"))}
    for fname, data in configmaps.get("costguard-policies", []):
        if set(data or {}) != set(shipped):
            problems.append(f"{fname}: ConfigMap costguard-policies has {sorted(data or {})}, policies/ has {sorted(shipped)}")
        for key, text in (data or {}).items():
            if key in shipped and text != shipped[key]:
                problems.append(f"{fname}: ConfigMap costguard-policies/{key} differs from policies/{key}")
    if "costguard-policies" not in configmaps:
        problems.append("no costguard-policies ConfigMap")
    return problems


# --- other files -------------------------------------------------------------

def tool(name):
    return pathlib.Path(sys.executable).parent / name


def check_dockerfile():
    result = subprocess.run([str(tool("hadolint")), str(HERE / "Dockerfile")], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit("hadolint:\n" + result.stdout + result.stderr)
    print("ok  deploy/Dockerfile (hadolint)")


def check_workflows():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    if not workflows:
        sys.exit("no .github/workflows/*.yml")
    cmd = [str(tool("jactionlint")), "--no-online", "--no-color", f"--shellcheck={tool('shellcheck')}", "--pyflakes="]
    result = subprocess.run(cmd + [str(w) for w in workflows], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit("jactionlint:\n" + result.stdout + result.stderr)
    for w in workflows:
        print(f"ok  {w.relative_to(ROOT)} (jactionlint + shellcheck)")


# --- self-test ---------------------------------------------------------------

def _doc(m, fname, kind, name=None):
    return next(d for d in m[fname] if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def _pod(m, fname):
    return pod_spec_of(next(d for d in m[fname] if d["kind"] in WORKLOAD_KINDS))[1]


def _cg(m, fname):
    spec = _pod(m, fname)
    return next(c for c in (spec.get("initContainers") or []) + spec["containers"] if is_costguard(c))


def _toml(m, fname, old, new):
    cm = next(d for d in m[fname] if d["kind"] == "ConfigMap" and "costguard.toml" in d.get("data", {}))
    text = cm["data"]["costguard.toml"]
    if old not in text:
        raise AssertionError(f"self-test: {old!r} not in {fname}'s costguard.toml")
    cm["data"]["costguard.toml"] = text.replace(old, new, 1)


SHARED, NATIVE, CLASSIC = "costguard-shared.yaml", "costguard-sidecar.yaml", "costguard-sidecar-classic.yaml"

MUTATIONS = [
    ("drop readOnlyRootFilesystem (costguard)", "readOnlyRootFilesystem",
     lambda m: _cg(m, SHARED)["securityContext"].pop("readOnlyRootFilesystem")),
    ("readOnlyRootFilesystem false (app)", "readOnlyRootFilesystem",
     lambda m: _pod(m, CLASSIC)["containers"][1]["securityContext"].update(readOnlyRootFilesystem=False)),
    ("pod runAsUser 0, containers inherit", "runAsUser",
     lambda m: ([c["securityContext"].pop("runAsUser") for c in _pod(m, NATIVE)["initContainers"] + _pod(m, NATIVE)["containers"]],
                _pod(m, NATIVE)["securityContext"].update(runAsUser=0))),
    ("runAsUser as a name", "runAsUser",
     lambda m: _cg(m, NATIVE)["securityContext"].update(runAsUser="costguard")),
    ("runAsNonRoot false", "runAsNonRoot",
     lambda m: _cg(m, CLASSIC)["securityContext"].update(runAsNonRoot=False)),
    ("allowPrivilegeEscalation true", "allowPrivilegeEscalation",
     lambda m: _cg(m, SHARED)["securityContext"].update(allowPrivilegeEscalation=True)),
    ("privileged migrate init container", "privileged",
     lambda m: _pod(m, SHARED)["initContainers"][0]["securityContext"].update(privileged=True)),
    ("capabilities drop [] ", "drop ALL",
     lambda m: _cg(m, SHARED)["securityContext"]["capabilities"].update(drop=[])),
    ("capabilities add NET_ADMIN", "capabilities add",
     lambda m: _cg(m, NATIVE)["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
    ("seccomp Unconfined", "seccompProfile",
     lambda m: _cg(m, SHARED)["securityContext"]["seccompProfile"].update(type="Unconfined")),
    ("service account token mounted", "automountServiceAccountToken",
     lambda m: _pod(m, SHARED).pop("automountServiceAccountToken")),
    ("hostNetwork", "hostNetwork",
     lambda m: _pod(m, CLASSIC).update(hostNetwork=True)),
    ("no memory limit (app)", "resources.limits.memory",
     lambda m: _pod(m, SHARED)["containers"][0]["resources"]["limits"].pop("memory")),
    ("no readinessProbe", "readinessProbe",
     lambda m: _cg(m, NATIVE).pop("readinessProbe")),
    ("livenessProbe on the admin port", "livenessProbe",
     lambda m: _cg(m, SHARED)["livenessProbe"]["httpGet"].update(port=9090)),
    ("native sidecar without restartPolicy Always", "restartPolicy",
     lambda m: _cg(m, NATIVE).pop("restartPolicy")),
    ("NetworkPolicy admits the admin port 9090", "9090",
     lambda m: _doc(m, SHARED, "NetworkPolicy")["spec"]["ingress"][0]["ports"].append({"protocol": "TCP", "port": 9090})),
    ("NetworkPolicy admits the app port 9000", "9000",
     lambda m: _doc(m, NATIVE, "NetworkPolicy")["spec"]["ingress"][1]["ports"].append({"protocol": "TCP", "port": 9000})),
    ("NetworkPolicy port range 8080-9999", "8080-9999",
     lambda m: _doc(m, CLASSIC, "NetworkPolicy")["spec"]["ingress"][0]["ports"][0].update(endPort=9999)),
    ("NetworkPolicy rule without ports", "no ports",
     lambda m: _doc(m, SHARED, "NetworkPolicy")["spec"]["ingress"][0].pop("ports")),
    ("NetworkPolicy rule from anywhere", "no from",
     lambda m: _doc(m, SHARED, "NetworkPolicy")["spec"]["ingress"][0].pop("from")),
    ("NetworkPolicy ipBlock 0.0.0.0/0", "ipBlock",
     lambda m: _doc(m, NATIVE, "NetworkPolicy")["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})),
    ("NetworkPolicy selects other pods", "no NetworkPolicy",
     lambda m: _doc(m, SHARED, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].update({"app.kubernetes.io/name": "other"})),
    ("Service exposes the admin port", "exposes port",
     lambda m: _doc(m, SHARED, "Service")["spec"]["ports"].append({"name": "admin", "port": 9090, "targetPort": 9090})),
    ("maxUnavailable 1", "maxUnavailable 0",
     lambda m: _doc(m, SHARED, "Deployment")["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1)),
    ("Recreate strategy", "maxUnavailable 0",
     lambda m: _doc(m, SHARED, "Deployment")["spec"].update(strategy={"type": "Recreate"})),
    ("replicas 1", "replicas below",
     lambda m: _doc(m, SHARED, "Deployment")["spec"].update(replicas=1)),
    ("HPA max 5", "3..20",
     lambda m: _doc(m, SHARED, "HorizontalPodAutoscaler")["spec"].update(maxReplicas=5)),
    ("HPA min 1", "3..20",
     lambda m: _doc(m, SHARED, "HorizontalPodAutoscaler")["spec"].update(minReplicas=1)),
    ("HPA on CPU only", "cpu and memory",
     lambda m: _doc(m, SHARED, "HorizontalPodAutoscaler")["spec"]["metrics"].pop(1)),
    ("HPA targets another Deployment", "HorizontalPodAutoscaler",
     lambda m: _doc(m, SHARED, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(name="other")),
    ("no PodDisruptionBudget", "PodDisruptionBudget",
     lambda m: m[SHARED].remove(_doc(m, SHARED, "PodDisruptionBudget"))),
    ("PDB selects other pods", "PodDisruptionBudget",
     lambda m: _doc(m, NATIVE, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"})),
    ("PDB maxUnavailable 0", "blocks every drain",
     lambda m: _doc(m, SHARED, "PodDisruptionBudget")["spec"].update(maxUnavailable=0)),
    ("embedded store scaled to 3", "replicas must be 1",
     lambda m: _doc(m, NATIVE, "StatefulSet")["spec"].update(replicas=3)),
    ("Deployment on the embedded store", "shared store",
     lambda m: _toml(m, SHARED, 'backend = "postgres"', 'backend = "sled"')),
    ("admin.listen 0.0.0.0", "loopback",
     lambda m: _toml(m, NATIVE, 'listen = "127.0.0.1:9090"', 'listen = "0.0.0.0:9090"')),
    ("upstream outside the pod", "proxy.upstream",
     lambda m: _toml(m, SHARED, 'upstream = "http://127.0.0.1:9000"', 'upstream = "http://cost-ops:9000"')),
    ("trusted_proxies empty", "trusted_proxies is empty",
     lambda m: _toml(m, CLASSIC, 'trusted_proxies = ["10.244.0.0/16"]', "trusted_proxies = []")),
    ("trusted_proxies 0.0.0.0/0", "any client",
     lambda m: _toml(m, SHARED, 'trusted_proxies = ["10.244.0.0/16"]', 'trusted_proxies = ["0.0.0.0/0"]')),
    ("typo in a key (listn)", "unknown key proxy.listn",
     lambda m: _toml(m, NATIVE, 'listen = "0.0.0.0:8080"', 'listn = "0.0.0.0:8080"')),
    ("unknown section", "unknown section",
     lambda m: _toml(m, SHARED, "[log]", "[logging]")),
    ("wrong type (trusted_proxies a string)", "trusted_proxies is a str",
     lambda m: _toml(m, SHARED, 'trusted_proxies = ["10.244.0.0/16"]', 'trusted_proxies = "10.244.0.0/16"')),
    ("unknown key in [[sso.oidc]]", "unknown key sso.oidc.client_secrt_file",
     lambda m: _toml(m, NATIVE, "client_secret_file =", "client_secrt_file =")),
    ("metrics listener on another port", "metrics.listen",
     lambda m: _toml(m, SHARED, 'listen = "0.0.0.0:9100"', 'listen = "0.0.0.0:9200"')),
    ("no metrics container port", "metrics",
     lambda m: _cg(m, CLASSIC)["ports"].pop(1)),
    ("no scrape annotations", "prometheus.io/scrape",
     lambda m: _doc(m, SHARED, "Deployment")["spec"]["template"]["metadata"].pop("annotations")),
    ("secret file outside the Secret", "not in a mounted Secret",
     lambda m: _toml(m, NATIVE, '"/var/run/secrets/costguard/admin-token"', '"/etc/costguard/config/admin-token"')),
    ("secret key not in the volume's items", "lists no item",
     lambda m: _pod(m, SHARED)["volumes"][2]["secret"]["items"].pop(0)),
    ("inline database URL", "store.url inline",
     lambda m: _toml(m, SHARED, 'url_file = "/var/run/secrets/costguard/store-url"', 'url = "postgres://u:p@db/x"')),
    ("no audit key file", "audit.hmac_key_file",
     lambda m: _toml(m, CLASSIC, 'hmac_key_file = "/var/run/secrets/costguard/audit-key"', "")),
    ("store on the read-only root filesystem", "store.path",
     lambda m: _toml(m, NATIVE, 'path = "/var/lib/costguard/store"', 'path = "/srv/costguard"')),
    ("store path is the mount point", "mount point",
     lambda m: _toml(m, CLASSIC, 'path = "/var/lib/costguard/store"', 'path = "/var/lib/costguard"')),
    ("migrate without the policies mount", "container migrate: policy.dir",
     lambda m: _pod(m, SHARED)["initContainers"][0]["volumeMounts"].pop(1)),
    ("migrate without the secrets mount", "container migrate: admin.token_file",
     lambda m: _pod(m, SHARED)["initContainers"][0]["volumeMounts"].pop(2)),
    ("policies mounted with subPath", "subPath",
     lambda m: next(v for v in _cg(m, NATIVE)["volumeMounts"] if v["name"] == "policies").update(subPath="roles.toml")),
    ("policy ConfigMap differs from policies/", "differs from policies/",
     lambda m: _doc(m, SHARED, "ConfigMap", "costguard-policies")["data"].update(
         {"roles.toml": _doc(m, SHARED, "ConfigMap", "costguard-policies")["data"]["roles.toml"] + "\n# edited\n"})),
    ("shared ConfigMap differs between files", "differs between",
     lambda m: _toml(m, CLASSIC, 'format = "json"', 'format = "human"')),
    ("no classic form left", "classic sidecar form",
     lambda m: m.pop(CLASSIC)),
]

SCHEMA_MUTATIONS = [
    ("unknown field in a container", lambda m: _cg(m, SHARED).update(restartPolicyy="Always")),
    ("wrong type: containerPort a string", lambda m: _cg(m, NATIVE)["ports"][0].update(containerPort="8080")),
]


def self_test(manifests):
    if policy_problems(manifests):
        sys.exit("self-test: the unmodified manifests must pass the policy first")
    failures = 0
    for desc, expect, mutate in MUTATIONS:
        m = copy.deepcopy(manifests)
        mutate(m)
        found = policy_problems(m)
        hit = [p for p in found if expect in p]
        if hit:
            print(f"ok  rejected: {desc}\n      {hit[0]}")
        else:
            failures += 1
            print(f"FAIL not rejected as expected ({expect!r}): {desc}" + (f"\n      got: {found}" if found else ""))
    for desc, mutate in SCHEMA_MUTATIONS:
        m = copy.deepcopy(manifests)
        mutate(m)
        try:
            for docs in m.values():
                for d in docs:
                    kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            print(f"ok  rejected by the schema: {desc}\n      {str(e).splitlines()[0][:160]}")
        else:
            failures += 1
            print(f"FAIL schema accepted: {desc}")
    total = len(MUTATIONS) + len(SCHEMA_MUTATIONS)
    if failures:
        sys.exit(f"self-test: {failures} of {total} mutations not rejected")
    print(f"ok  self-test: all {total} mutations rejected")


def main():
    manifests = load_manifests()
    if sys.argv[1:] == ["--self-test"]:
        self_test(manifests)
        return
    if sys.argv[1:]:
        sys.exit(__doc__)
    try:
        check_schemas(manifests)
    except kubernetes_validate.ValidationError as e:
        sys.exit(f"invalid manifest: {e}")
    problems = policy_problems(manifests)
    if problems:
        sys.exit("deploy policy:\n  " + "\n  ".join(problems))
    print(f"ok  deploy policy: {sum(len(d) for d in manifests.values())} objects in {len(manifests)} manifests "
          "(security context, probes, resources, rollout, HPA, PDB, NetworkPolicy, Services, costguard.toml, policies/)")
    check_dockerfile()
    check_workflows()


if __name__ == "__main__":
    main()
