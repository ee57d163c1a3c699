#!/usr/bin/env python3
"""Checks one rendering of charts/blksnap-csi (what `helm template` printed)
against what the chart promises for its option set.

usage: check.py SET MANIFEST VERSIONS

SET is "default" or the name of a file in charts/blksnap-csi/ci/ (without
.yaml); VERSIONS is tests/k8s/versions, whose sidecar versions the default
images must carry. Prints one line per check, "PASS name" or "FAIL name:
why", and exits 0 (tests/chart/run counts the lines).
"""

import base64
import subprocess
import sys
import tempfile
import os

import yaml

SET, MANIFEST, VERSIONS = sys.argv[1:4]
DOCS = [d for d in yaml.safe_load_all(open(MANIFEST)) if d]
results = []


def check(name, ok, why=""):
    results.append((name, bool(ok), why))


def objs(kind, api=None):
    return [d for d in DOCS if d["kind"] == kind and (api is None or d["apiVersion"] == api)]


def one(kind, api=None):
    found = objs(kind, api)
    return found[0] if len(found) == 1 else None


def named(kind, suffix):
    for d in objs(kind):
        if d["metadata"]["name"].endswith(suffix):
            return d
    return None


def containers(workload, init=False):
    spec = workload["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers" if init else "containers", [])}


def env(c):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def privileged(c):
    return bool((c.get("securityContext") or {}).get("privileged"))


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True)


def verify(ca_pem, cert_pem, hostname=None, purpose=None):
    """openssl verify of a leaf against a CA, optionally for a host name and a purpose."""
    with tempfile.TemporaryDirectory() as d:
        ca, leaf = os.path.join(d, "ca.pem"), os.path.join(d, "leaf.pem")
        open(ca, "wb").write(ca_pem)
        open(leaf, "wb").write(cert_pem)
        args = ["verify", "-CAfile", ca]
        if hostname:
            args += ["-verify_hostname", hostname]
        if purpose:
            args += ["-purpose", purpose]
        r = openssl(*args, leaf)
        return r.returncode == 0, (r.stdout + r.stderr).decode().strip()


def secret(name_suffix):
    s = named("Secret", name_suffix)
    return {k: base64.b64decode(v) for k, v in s["data"].items()} if s else None


def versions():
    v = {}
    for line in open(VERSIONS):
        f = line.split("#")[0].split()
        # A component's first row; more rows are its extra pins.
        if len(f) >= 3 and f[0] not in v:
            v[f[0]] = f[2]
    return v


# ---- what every option set must hold ---------------------------------------

release_labelled = [d for d in DOCS if "app.kubernetes.io/instance" not in d["metadata"].get("labels", {})]
check("every object carries app.kubernetes.io/instance (uninstall finds them by it)",
      not release_labelled, ", ".join(f'{d["kind"]}/{d["metadata"]["name"]}' for d in release_labelled))

ctl = next((d for d in objs("Deployment") if d["metadata"]["name"].endswith("-controller")), None)
ds = one("DaemonSet")
driver = one("CSIDriver")
check("one controller Deployment, one node DaemonSet, one CSIDriver", ctl and ds and driver)
if not (ctl and ds and driver):
    for n, ok, why in results:
        print(("PASS " if ok else "FAIL ") + n + ("" if ok else ": " + why))
    sys.exit(0)
name = driver["metadata"]["name"]
ds_c, ctl_c = containers(ds), containers(ctl)

spec = driver["spec"]
check("CSIDriver: attachRequired false, storageCapacity true, Persistent, fsGroupPolicy File, no pod info",
      spec.get("attachRequired") is False and spec.get("storageCapacity") is True
      and spec.get("volumeLifecycleModes") == ["Persistent"] and spec.get("fsGroupPolicy") == "File"
      and spec.get("podInfoOnMount") is False, str(spec))

sc_bad = [s["metadata"]["name"] for s in objs("StorageClass")
          if s["provisioner"] != name or s["volumeBindingMode"] != "WaitForFirstConsumer"
          or s["parameters"].get("backend") not in ("pool", "device")
          or set(s["parameters"]) - {"backend", "csi.storage.k8s.io/fstype"}]
check("StorageClasses: our provisioner, WaitForFirstConsumer, only parameters the node plugin reads",
      objs("StorageClass") and not sc_bad, str(sc_bad))

pods = [("controller", ctl), ("node", ds)]
labels_ok = all(w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "blksnap-csi"
                and w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == comp
                for comp, w in pods)
check("pods labelled app.kubernetes.io/name=blksnap-csi and component controller/node (node API discovery)", labels_ok)

priv = [f"{w['metadata']['name']}/{c}" for _, w in pods for c, v in containers(w).items() if privileged(v)]
priv += [f"{w['metadata']['name']}/{c}" for _, w in pods for c, v in containers(w, True).items() if privileged(v)]
check("only the node plugin and its module-loader init container are privileged",
      sorted(priv) == sorted([f"{ds['metadata']['name']}/node-plugin", f"{ds['metadata']['name']}/module-loader"]), str(priv))

unpriv = [c for _, w in pods for c, v in containers(w).items() if not privileged(v)
          and (v.get("securityContext") or {}).get("capabilities", {}).get("drop") != ["ALL"]]
check("every other container drops all capabilities", not unpriv, str(unpriv))

bidir = [(c, m["name"]) for _, w in pods for c, v in containers(w).items()
         for m in v.get("volumeMounts", []) if m.get("mountPropagation") == "Bidirectional"]
check("Bidirectional propagation only on the node plugin's kubelet directory",
      bidir == [("node-plugin", "kubelet-dir")], str(bidir))

tspec = ds["spec"]["template"]["spec"]
check("node pods not on the host network, host PID or IPC",
      not any(tspec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")))
np = ds_c.get("node-plugin", {})
check("node plugin: NODE_ID from spec.nodeName, node API on 9820, driver name",
      env(np).get("NODE_ID") == {"fieldRef": {"fieldPath": "spec.nodeName"}}
      and env(np).get("NODE_API_ADDRESS") == "0.0.0.0:9820" and env(np).get("DRIVER_NAME") == name)

want = {"csi-driver", "csi-provisioner", "csi-snapshotter", "csi-resizer", "liveness-probe"}
if SET != "minimal":
    want.add("csi-snapshot-metadata")
check("controller containers", set(ctl_c) == want, str(sorted(ctl_c)))
check("node containers", set(ds_c) == {"node-plugin", "node-driver-registrar", "liveness-probe"}, str(sorted(ds_c)))

prov = ctl_c["csi-provisioner"]["args"]
check("provisioner: Topology, capacity with its owner, extra metadata, strict topology, leader election",
      all(a in prov for a in ("--feature-gates=Topology=true", "--enable-capacity", "--capacity-ownerref-level=2",
                              "--extra-create-metadata", "--strict-topology", "--leader-election"))
      and {"NAMESPACE", "POD_NAME"} <= set(env(ctl_c["csi-provisioner"])), str(prov))
check("snapshotter, resizer and our driver elect a leader",
      all("--leader-election" in ctl_c[c]["args"] for c in ("csi-snapshotter", "csi-resizer", "csi-driver"))
      and "--leader-election-namespace=$(NAMESPACE)" in ctl_c["csi-driver"]["args"]
      and {"NAMESPACE", "POD_NAME"} <= set(env(ctl_c["csi-driver"])))

# Named ports of probes must be ports of the same container (the kubelet looks there).
bad_ports = []
for _, w in pods:
    for cname, c in containers(w).items():
        names = {p["name"] for p in c.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            port = (c.get(probe) or {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in names:
                bad_ports.append(f"{cname}.{probe}:{port}")
check("probes use ports of their own container", not bad_ports, str(bad_ports))

dup = []
for _, w in pods:
    seen = {}
    for c in containers(w).values():
        for p in c.get("ports", []):
            if p["containerPort"] in seen:
                dup.append(p["containerPort"])
            seen[p["containerPort"]] = 1
check("no two containers of a pod on one port", not dup, str(dup))

host_paths = {v["name"]: v["hostPath"]["path"] for v in tspec["volumes"] if "hostPath" in v}
check("node hostPaths are the kubelet's, /dev, /lib/modules, the plugin's own dirs (and /usr/src to build)",
      "/dev" in host_paths.values() and all(
          p.startswith(("/dev", "/lib/modules", "/usr/src", "/usr/lib", "/var/lib/blksnap-csi", "/srv/blksnap"))
          or p.startswith(env(np)["KUBELET_DIR"]) for p in host_paths.values()), str(host_paths))

rules = [r for d in objs("ClusterRole") + objs("Role") for r in d["rules"]]
check("RBAC: no wildcards, no Secrets",
      not any("*" in r.get("verbs", []) + r.get("resources", []) + r.get("apiGroups", []) or "secrets" in r.get("resources", [])
              for r in rules))

if SET not in ("images", "overrides"):
    v = versions()
    img = {c["name"]: c["image"] for _, w in pods for c in containers(w).values()}
    want_img = {"csi-provisioner": f"registry.k8s.io/sig-storage/csi-provisioner:{v['external-provisioner']}",
                "csi-snapshotter": f"registry.k8s.io/sig-storage/csi-snapshotter:{v['external-snapshotter']}",
                "csi-resizer": f"registry.k8s.io/sig-storage/csi-resizer:{v['external-resizer']}"}
    if "csi-snapshot-metadata" in img:
        want_img["csi-snapshot-metadata"] = f"registry.k8s.io/sig-storage/csi-snapshot-metadata:{v['external-snapshot-metadata']}"
    drift = {k: img.get(k) for k, want_v in want_img.items() if img.get(k) != want_v}
    check("sidecar images at the versions of tests/k8s/versions", not drift, str(drift))
    ours = [c for _, w in pods for init in (False, True) for c in containers(w, init).values() if "blksnap-csi-" in c["image"]]
    check("our three images: never pulled (IfNotPresent)", len(ours) == 3 and all(c["imagePullPolicy"] == "IfNotPresent" for c in ours))
    # The chart must ask for what the build tags, or an imported image is
    # not found: names from packaging/images/name, the workspace's version.
    if SET == "default":
        cargo = open("Cargo.toml").read().split("[workspace.package]")[1]
        version = next(l.split('"')[1] for l in cargo.splitlines() if l.startswith("version = "))
        built = {c: "localhost/" + subprocess.run(["packaging/images/name", n], capture_output=True,
                                                  text=True, check=True).stdout.strip() + ":" + version
                 for c, n in (("module-loader", "module-loader"), ("node-plugin", "node-plugin"),
                              ("csi-driver", "csi-driver"))}
        got = {"module-loader": containers(ds, True)["module-loader"]["image"],
               "node-plugin": ds_c["node-plugin"]["image"], "csi-driver": ctl_c["csi-driver"]["image"]}
        check("our images' defaults are the tags packaging/images/build gives", got == built,
              f"chart {got}, build {built}")

# ---- TLS ----------------------------------------------------------------------

tls_source = "existing" if SET == "existing-tls" else "certManager" if SET == "cert-manager" else "helm"
if tls_source == "helm":
    node_ca, ctl_s, meta_s = secret("-node-api-ca"), secret("-controller-tls"), secret("-snapshot-metadata-tls")
    ok, why = verify(node_ca["tls.crt"], ctl_s["tls.crt"], f"controller.{name}", "sslclient")
    check("controller certificate: controller.<driver>, client auth, from the node API CA", ok, why)
    check("controller certificate's ca.crt is the node API CA", ctl_s["ca.crt"] == node_ca["tls.crt"])
    if SET != "csr":
        node_s = secret("-node-tls")
        ok, why = verify(node_ca["tls.crt"], node_s["tls.crt"], f"worker-1.node.{name}", "sslserver")
        check("node certificate valid for worker-1.node.<driver> as a server", ok, why)
        ok, _ = verify(node_ca["tls.crt"], node_s["tls.crt"], f"controller.{name}")
        check("node certificate not valid for controller.<driver>", not ok)
    else:
        check("nodeTls.mode csr: no shared node certificate", secret("-node-tls") is None)
    if SET != "minimal":
        svc = named("Service", "-snapshot-metadata")
        host = f'{svc["metadata"]["name"]}.{svc["metadata"]["namespace"]}.svc'
        meta_ca = secret("-snapshot-metadata-ca")
        ok, why = verify(meta_ca["tls.crt"], meta_s["tls.crt"], host, "sslserver")
        check("snapshot-metadata certificate valid for its Service", ok, why)
        ok, _ = verify(node_ca["tls.crt"], meta_s["tls.crt"])
        check("snapshot-metadata certificate not from the node API CA", not ok)
        sms = one("SnapshotMetadataService")
        if sms is not None:
            ca = base64.b64decode(sms["spec"]["caCert"])
            check("SnapshotMetadataService: named after the driver, its caCert is the sidecar's CA, Service address",
                  sms["metadata"]["name"] == name and ca == meta_ca["tls.crt"]
                  and sms["spec"]["address"] == f'{svc["metadata"]["name"]}.{svc["metadata"]["namespace"]}:{svc["spec"]["ports"][0]["port"]}'
                  and sms["spec"]["audience"], str(sms["spec"].get("address")))
    sums = {w["spec"]["template"]["metadata"]["annotations"]["checksum/tls"] for _, w in pods}
    check("both pods carry the same TLS checksum (one set of keys per render)", len(sums) == 1, str(sums))

# ---- per option set -------------------------------------------------------------

if SET == "default":
    check("default: two controller replicas", ctl["spec"]["replicas"] == 2)
    loader = containers(ds, True).get("module-loader", {})
    lm = {m["name"]: m for m in loader.get("volumeMounts", [])}
    check("default: the module-loader init container builds the module from the host's headers, read-only",
          loader.get("args") == ["build"] and all(lm.get(n, {}).get("readOnly") for n in ("usr-src", "lib-modules", "host-usr-lib"))
          and lm.get("host-usr-lib", {}).get("mountPath") == "/host/usr/lib" and "dev" in lm)
    check("default: node pods get no ServiceAccount token", tspec.get("automountServiceAccountToken") is False)
    check("default: VolumeSnapshotClass and VolumeGroupSnapshotClass (groupsnapshot v1) for the driver",
          one("VolumeSnapshotClass", "snapshot.storage.k8s.io/v1")["driver"] == name
          and one("VolumeGroupSnapshotClass", "groupsnapshot.storage.k8s.io/v1")["driver"] == name)
    check("default: SnapshotMetadataService rendered when the API is served", one("SnapshotMetadataService") is not None)
    check("default: metrics Services for controller and node", len([s for s in objs("Service") if s["metadata"]["name"].endswith("-metrics")]) == 2)
    check("default: no CSR rules", not any("certificatesigningrequests" in r.get("resources", []) for r in rules))
elif SET == "images":
    np_img = ds_c["node-plugin"]
    check("images: digest wins over tag, pullPolicy Never",
          np_img["image"].endswith("@sha256:" + "0123456789abcdef" * 4) and np_img["imagePullPolicy"] == "Never"
          and ctl_c["csi-driver"]["image"] == "mirror.example.com/blksnap/blksnap-csi-driver:0.1.0-dev")
    check("images: pull secrets on both pods",
          all(w["spec"]["template"]["spec"].get("imagePullSecrets") == [{"name": "mirror-credentials"}] for _, w in pods))
elif SET == "host-module":
    mounts = {m["name"]: m for m in np["volumeMounts"]}
    loader = containers(ds, True)["module-loader"]
    check("host-module: the loader modprobes with the parameters, /lib/modules read-only, no /usr/src or /usr/lib",
          loader["args"] == ["host"] and env(loader)["BLKSNAP_MODULE_PARAMS"] == "chunk_minimum_shift=16 tracking_block_minimum_shift=16"
          and mounts["lib-modules"].get("readOnly") and not {"usr-src", "host-usr-lib"} & set(host_paths))
    check("host-module: static devices and module parameters as flags, no pool",
          {"--static-device=fast-1=/dev/disk/by-id/nvme-example-1", "--module-param=chunk_minimum_shift=16"} <= set(np["args"])
          and "POOL_DIR" not in env(np) and "--default-backend=device" in np["args"])
elif SET == "classes":
    scs = {s["metadata"]["name"]: s for s in objs("StorageClass")}
    check("classes: two StorageClasses, the first the default, xfs, mount options",
          set(scs) == {"blksnap", "blksnap-retain"}
          and scs["blksnap"]["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
          and scs["blksnap"]["parameters"]["csi.storage.k8s.io/fstype"] == "xfs" and scs["blksnap"]["mountOptions"] == ["noatime"]
          and scs["blksnap-retain"]["reclaimPolicy"] == "Retain")
    vsc, vgsc = one("VolumeSnapshotClass"), one("VolumeGroupSnapshotClass")
    check("classes: snapshot classes with their limits and default marks",
          vsc["parameters"] == {"diffStorageLimit": "2Gi"} and vgsc["parameters"] == {"diffStoragePercent": "25"}
          and vsc["metadata"]["annotations"]["snapshot.storage.kubernetes.io/is-default-class"] == "true"
          and vgsc["metadata"]["annotations"]["groupsnapshot.storage.kubernetes.io/is-default-class"] == "true")
elif SET == "minimal":
    check("minimal: no metrics Services, no snapshot classes, no SnapshotMetadataService",
          not [s for s in objs("Service")] and not objs("VolumeSnapshotClass") and not objs("VolumeGroupSnapshotClass")
          and not objs("SnapshotMetadataService") and "METRICS_ADDRESS" not in env(np))
elif SET == "overrides":
    check("overrides: the driver name everywhere",
          all(s["provisioner"] == "blksnap.example.com" for s in objs("StorageClass")) and env(np)["DRIVER_NAME"] == "blksnap.example.com")
    check("overrides: fullnameOverride names the objects",
          all(d["metadata"]["name"].startswith("blk-") for d in DOCS if d["kind"] not in ("CSIDriver", "StorageClass", "VolumeSnapshotClass", "VolumeGroupSnapshotClass", "SnapshotMetadataService")))
    kd = "/var/snap/microk8s/common/var/lib/kubelet"
    check("overrides: the kubelet directory in the registrar, the mounts and KUBELET_DIR",
          f"--kubelet-registration-path={kd}/plugins/blksnap.example.com/csi.sock" in ds_c["node-driver-registrar"]["args"]
          and env(np)["KUBELET_DIR"] == kd and host_paths["registration-dir"] == f"{kd}/plugins_registry")
    check("overrides: replicas, lease timings, extra flags, audience",
          ctl["spec"]["replicas"] == 3 and "--leader-election-lease-duration=30s" in prov and "--worker-threads=20" in prov
          and "--audience=backup.example.com" in ctl_c["csi-snapshot-metadata"]["args"])
    ok, why = verify(secret("-node-api-ca")["tls.crt"], secret("-node-tls")["tls.crt"],
                     "ip-10-0-0-1.eu-west-1.compute.internal.node.blksnap.example.com")
    check("overrides: a dotted node name in the shared certificate", ok, why)
elif SET == "cert-manager":
    check("cert-manager: two CA Issuers, three Certificates, only the CA Secrets rendered",
          len(objs("Issuer")) == 2 and len(objs("Certificate")) == 3
          and sorted(s["metadata"]["name"].split("-csi-")[-1] for s in objs("Secret")) == ["node-api-ca", "snapshot-metadata-ca"])
    usages = {c["metadata"]["name"].rsplit("-", 2)[-2]: c["spec"]["usages"] for c in objs("Certificate")}
    check("cert-manager: client auth for the controller, server auth for node and sidecar",
          "client auth" in usages.get("controller", []) and "server auth" in usages.get("node", []), str(usages))
elif SET == "existing-tls":
    vols = {v["secret"]["secretName"] for _, w in pods for v in w["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    check("existing-tls: no Secret rendered, the pods mount the given ones, no SnapshotMetadataService without its CA",
          not objs("Secret") and vols == {"my-controller-tls", "my-node-tls", "my-snapshot-metadata-tls"}
          and not objs("SnapshotMetadataService"), str(vols))
elif SET == "csr":
    node_rules = [r for d in objs("ClusterRole") if d["metadata"]["name"].endswith("-node") for r in d["rules"]]
    check("csr: node plugin may create/get/watch CSRs only",
          node_rules == [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "watch"]}],
          str(node_rules))
    signer = [r for r in rules if "signers" in r.get("resources", [])]
    check("csr: the controller approves and signs for <driver>/node-api only",
          signer == [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "resourceNames": [f"{name}/node-api"], "verbs": ["approve", "sign"]}],
          str(signer))
    check("csr: node pods get a token, their key in memory",
          tspec.get("automountServiceAccountToken") is True
          and any(v.get("emptyDir", {}).get("medium") == "Memory" for v in tspec["volumes"] if v["name"] == "tls"))
elif SET == "monitoring":
    sms = objs("ServiceMonitor")
    check("monitoring: ServiceMonitors for controller and node with the extra label",
          len(sms) == 2 and all(s["metadata"]["labels"].get("release") == "prometheus" for s in sms))
elif SET == "snapshot-controller":
    sc = named("Deployment", "-snapshot-controller")
    c = sc and containers(sc)["snapshot-controller"]
    check("snapshot-controller: a Deployment with leader election, unprivileged, at the test bed's version",
          c and "--leader-election" in c["args"] and not privileged(c)
          and c["image"].endswith(":" + versions()["external-snapshotter"]))

for n, ok, why in results:
    print(("PASS " if ok else "FAIL ") + f"{SET}: {n}" + ("" if ok else f": {why}"))
