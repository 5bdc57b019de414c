//! Kubeconfig credentials through the real binary (issue 3): HTTPS verified against a test CA
//! made with `openssl` at test time (and refused with the wrong CA), a `tokenFile` and an exec
//! credential plugin whose tokens rotate while the sidecar runs (the server starts answering 401
//! to the old token), and broken kubeconfigs: exit 1 with an error naming the file and field.
//! Parsing details are unit-tested in src/kube/config.rs; these prove the wiring.
//!
//! The corpus (issue 14): `tests/kubeconfigs/` holds kubeconfigs shaped as kind, kubeadm, k3s,
//! EKS, AKS, GKE, OpenShift, Rancher, minikube and `kubectl config view --raw -o json` write
//! them, plus hand-written ones; each is loaded by the binary and its credentials must reach the
//! fake API server. `tests/kubeconfigs/bad/` and generated hostile files must exit 1.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::kit::apiserver::{FakeApiServer, Options, TlsFiles};
use crate::kit::csidriver::temp_dir;
use crate::kit::fixtures;
use crate::support::{bin, run_binary, Env, Sidecar};
use healthmon::kube::config::base64_encode;

const WAIT: Duration = Duration::from_secs(30);
const FAST: &str = "--list-volumes-interval=300ms";

/// CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and an
/// unrelated second CA; EC keys because they are generated in milliseconds.
fn make_pki(dir: &Path) {
    let script = r#"set -e
ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
ca='-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign'
openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca $ca
openssl req -x509 $ec -keyout other.key -out other-ca.crt -days 2 -subj /CN=other-ca $ca
openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext
openssl req $ec -keyout client.key -out client.csr -subj /CN=kubernetes-admin
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext
"#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn abnormal(env: &Env, id: &str) {
    env.driver.set_volume(id, true, "volume is broken");
    env.volume(id);
}

fn assert_event(env: &Env, sidecar: &Sidecar, id: &str) {
    assert!(
        env.wait_event(&format!("pvc-{id}"), "VolumeConditionAbnormal", WAIT),
        "no event for {id}: {:?}\n{}",
        env.api
            .requests()
            .iter()
            .map(|r| format!("{} {} {}", r.status, r.method, r.path))
            .collect::<Vec<_>>(),
        sidecar.stderr.text()
    );
}

fn statuses(api: &FakeApiServer) -> Vec<u16> {
    api.requests().iter().map(|r| r.status).collect()
}

/// A kubeconfig for a plain-HTTP server with the given `user:` body (indented four spaces).
fn kubeconfig_with_user(api: &FakeApiServer, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\nusers:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        api.url()
    )
}

/// The fake API server on HTTPS with the PKI's server certificate (chain to its CA), wanting
/// `token` when given.
fn https_fake(pki: &Path, token: Option<&str>) -> FakeApiServer {
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();
    let mut chain = read("server.crt");
    chain.extend(read("ca.crt"));
    FakeApiServer::start_with(Options {
        tls: Some(TlsFiles {
            cert_pem: chain,
            key_pem: read("server.key"),
        }),
        token: token.map(str::to_string),
        ..Options::default()
    })
    .expect("start https fake")
}

#[test]
fn https_with_a_test_ca_and_bearer_token() {
    let pki = temp_dir("pki");
    make_pki(&pki);
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();
    let api = https_fake(&pki, Some("tls-token"));
    assert!(api.url().starts_with("https://"));
    // Trusting the wrong CA: the handshake fails, is reported, and nothing gets through.
    let wrong = api.kubeconfig_yaml().replace(
        &healthmon::kube::config::base64_encode(&read("ca.crt")),
        &healthmon::kube::config::base64_encode(&read("other-ca.crt")),
    );
    let env = Env::with_api(api, None);
    abnormal(&env, "a");
    let untrusting = env.dir.join("wrong-ca");
    std::fs::write(&untrusting, wrong).unwrap();
    let mut refused = Sidecar::adopt(fixtures::spawn_sidecar(
        &untrusting,
        env.driver.socket(),
        &[FAST],
        std::process::Stdio::piped(),
    ));
    assert!(
        refused.stderr.wait_for("reflector-pv: list failed", WAIT),
        "{}",
        refused.stderr.text()
    );
    assert!(
        refused.stderr.text().to_lowercase().contains("certificate"),
        "{}",
        refused.stderr.text()
    );
    assert!(env.api.requests().is_empty(), "{:?}", statuses(&env.api));
    assert!(refused.still_running_after(Duration::from_millis(100)));
    drop(refused);

    let sidecar = env.spawn(&[FAST]);
    assert_event(&env, &sidecar, "a");
    assert!(
        statuses(&env.api).iter().all(|s| *s != 401),
        "{:?}",
        statuses(&env.api)
    );
    let _ = std::fs::remove_dir_all(pki);
}

#[test]
fn token_file_is_used_and_reread_after_rotation() {
    let api = FakeApiServer::start_with(Options {
        token: Some("first".into()),
        ..Options::default()
    })
    .unwrap();
    let dir = temp_dir("tokenfile");
    let token = dir.join("token");
    std::fs::write(&token, "first\n").unwrap();
    let yaml = kubeconfig_with_user(&api, &format!("    tokenFile: {}\n", token.display()));
    let env = Env::with_api(api, Some(yaml));
    abnormal(&env, "a");
    let sidecar = env.spawn(&[FAST]);
    assert_event(&env, &sidecar, "a");
    assert!(!statuses(&env.api).contains(&401));

    // The cluster rotates the token: the old one is refused, the file holds the new one.
    std::fs::write(&token, "second\n").unwrap();
    env.api.set_token(Some("second"));
    abnormal(&env, "b");
    assert_event(&env, &sidecar, "b");
    // Logged just after its answer, the accepted retry may trail the event it wrote.
    let accepted_after_refusal = |a: &FakeApiServer| {
        let st = statuses(a);
        st.iter()
            .position(|s| *s == 401)
            .is_some_and(|i| st[i + 1..].iter().any(|s| (200..300).contains(s)))
    };
    assert!(
        env.api.wait_until(WAIT, accepted_after_refusal),
        "{:?}",
        statuses(&env.api)
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn write_plugin(dir: &Path) -> PathBuf {
    let plugin = dir.join("plugin.sh");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\necho run >> {runs}\nprintf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"%s\"}}}}\\n' \"$(cat {token})\"\n",
            runs = dir.join("runs").display(),
            token = dir.join("exec-token").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    plugin
}

fn plugin_runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn exec_credential_plugin_is_run_and_rerun_after_401() {
    let api = FakeApiServer::start_with(Options {
        token: Some("exec-1".into()),
        ..Options::default()
    })
    .unwrap();
    let dir = temp_dir("exec");
    std::fs::write(dir.join("exec-token"), "exec-1").unwrap();
    let plugin = write_plugin(&dir);
    let yaml = kubeconfig_with_user(
        &api,
        &format!(
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\n",
            plugin.display()
        ),
    );
    let env = Env::with_api(api, Some(yaml));
    abnormal(&env, "a");
    let sidecar = env.spawn(&[FAST]);
    assert_event(&env, &sidecar, "a");
    assert!(!statuses(&env.api).contains(&401));
    // The credential has no expiry: one run serves every request until the server refuses it.
    assert_eq!(plugin_runs(&dir), 1);

    std::fs::write(dir.join("exec-token"), "exec-2").unwrap();
    env.api.set_token(Some("exec-2"));
    abnormal(&env, "b");
    assert_event(&env, &sidecar, "b");
    assert!(statuses(&env.api).contains(&401));
    assert!(plugin_runs(&dir) >= 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn broken_kubeconfigs_exit_1_naming_file_and_field() {
    let dir = temp_dir("badkube");
    let failing = dir.join("fail.sh");
    std::fs::write(&failing, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let head = "apiVersion: v1\nkind: Config\ncurrent-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n";
    let cluster = "clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no-server",
            format!("{head}clusters:\n- name: c\n  cluster: {{}}\nusers:\n- name: u\n  user: {{}}\n"),
            "clusters[c].cluster.server",
        ),
        (
            "missing-token-file",
            format!("{head}{cluster}users:\n- name: u\n  user:\n    tokenFile: {}\n", dir.join("absent").display()),
            "users[u].user.tokenFile",
        ),
        (
            "failing-plugin",
            format!("{head}{cluster}users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\n", failing.display()),
            "users[u].user.exec",
        ),
        ("not-yaml", "a: b\n\tc: [\n".to_string(), "line 2"),
    ];
    for (name, text, field) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) = run_binary(&[
            &format!("--kubeconfig={}", path.display()),
            &format!("--csi-address={}", dir.join("no.sock").display()),
        ]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(field),
            "{name}: no mention of the file and {field:?}:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kubeconfigs")
}

/// Stand-ins for the credential plugins the cloud files name, each checking that the arguments,
/// environment and cluster info the file asks for reached it before it prints the token.
fn write_cloud_plugins(dir: &Path, token: &str) {
    let credential = format!(
        r#"printf '%s\n' '{{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{{}},"status":{{"expirationTimestamp":"2999-01-01T00:00:00Z","token":"{token}"}}}}'"#
    );
    let plugins = [
        (
            "aws",
            r#"[ "$*" = "--region us-west-2 eks get-token --cluster-name demo --output json" ] || { echo "aws: args: $*" >&2; exit 2; }
[ "$AWS_PROFILE" = demo-profile ] || { echo "aws: AWS_PROFILE unset" >&2; exit 2; }"#,
        ),
        (
            "kubelogin",
            r#"[ "$*" = "get-token --login azurecli --server-id 6dae42f8-4368-4678-94ff-3960e28e3630" ] || { echo "kubelogin: args: $*" >&2; exit 2; }"#,
        ),
        (
            "gke-gcloud-auth-plugin",
            r#"case "$KUBERNETES_EXEC_INFO" in *'"certificate-authority-data":'*'"server":"https://127.0.0.1:'*) ;; *) echo "gke: no cluster info: $KUBERNETES_EXEC_INFO" >&2; exit 2;; esac"#,
        ),
    ];
    for (name, check) in plugins {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{check}\n{credential}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `data` in base64, cut into 64-character lines joined by `sep`.
fn wrapped_base64(data: &[u8], sep: &str) -> String {
    let b64 = base64_encode(data);
    b64.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(sep)
}

/// Load one corpus file with the placeholders filled in, run the sidecar with it against an
/// https fake API server that wants `token` (when given), and wait for an accepted request.
fn corpus_file_reaches_the_server(pki: &Path, file: &str, token: Option<&str>) {
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();
    let api = https_fake(pki, token);
    let env = Env::with_api(api, None);
    let profile = env.dir.join(".minikube/profiles/minikube");
    std::fs::create_dir_all(&profile).unwrap();
    std::fs::write(env.dir.join(".minikube/ca.crt"), read("ca.crt")).unwrap();
    std::fs::write(profile.join("client.crt"), read("client.crt")).unwrap();
    std::fs::write(profile.join("client.key"), read("client.key")).unwrap();
    write_cloud_plugins(&env.dir, token.unwrap_or("unused"));

    let ca = read("ca.crt");
    let text = std::fs::read_to_string(corpus_dir().join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .replace("@SERVER@", &env.api.url())
        .replace("@CA_DATA_LINES@", &wrapped_base64(&ca, "\n    "))
        .replace(
            "@CA_DATA_ESCAPED_LINES@",
            &wrapped_base64(&ca, "\\\n      "),
        )
        .replace("@CA_DATA@", &base64_encode(&ca))
        .replace("@CERT_DATA@", &base64_encode(&read("client.crt")))
        .replace("@KEY_DATA@", &base64_encode(&read("client.key")))
        .replace("@DIR@", &env.dir.display().to_string());
    let path = env.dir.join(file);
    std::fs::write(&path, text).unwrap();

    let search = format!(
        "{}:{}",
        env.dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(bin())
        .arg(format!("--kubeconfig={}", path.display()))
        .arg(format!("--csi-address={}", env.driver.socket().display()))
        .arg(FAST)
        .env("PATH", search)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sidecar");
    let sidecar = Sidecar::adopt(child);
    let accepted = |a: &FakeApiServer| a.requests().iter().any(|r| (200..300).contains(&r.status));
    assert!(
        env.api.wait_until(WAIT, accepted),
        "{file}: no request accepted: {:?}\n{}",
        statuses(&env.api),
        sidecar.stderr.text()
    );
    assert!(
        !statuses(&env.api).contains(&401),
        "{file}: {:?}\n{}",
        statuses(&env.api),
        sidecar.stderr.text()
    );
}

#[test]
fn corpus_kubeconfigs_as_tools_write_them_reach_the_server() {
    let pki = temp_dir("corpus-pki");
    make_pki(&pki);
    // The file and the bearer token the fake wants (None: client certificate files, whose
    // TLS handshake against the test CA is what reaches the server).
    let cases = [
        ("kind.yaml", None),
        ("kubeadm-admin.conf", None),
        ("k3s.yaml", None),
        ("minikube.yaml", None),
        (
            "eks.yaml",
            Some("k8s-aws-v1.aHR0cHM6Ly9zdHMudXMtd2VzdC0yLmFtYXpvbmF3cy5jb20v"),
        ),
        (
            "aks.yaml",
            Some("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiI2ZGFlIn0.c2ln"),
        ),
        ("gke.yaml", Some("ya29.a0AfH6SMBx-gke_token")),
        (
            "openshift.yaml",
            Some("sha256~Qx3vAbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_A"),
        ),
        (
            "rancher.yaml",
            Some("kubeconfig-user-abc12:4f6s8dkx2l9pqzrtvwbn5hmc7jy3gf8kd2lq9wxz5rtvbn6mhpc"),
        ),
        ("kubectl-view-raw.json", Some("json-token-0123456789")),
        ("hand-written.yaml", Some("hand-written:token#1")),
        ("windows-crlf-bom.yaml", Some("windows-token")),
        ("multi-context.yaml", Some("staging-token")),
    ];
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".json") || n.ends_with(".conf"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = cases.iter().map(|(f, _)| f.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed, "every corpus file has a case");
    for (file, token) in cases {
        corpus_file_reaches_the_server(&pki, file, token);
    }
    let _ = std::fs::remove_dir_all(pki);
}

#[test]
fn corpus_malformed_kubeconfigs_exit_1_naming_file_and_problem() {
    let dir = temp_dir("corpus-bad");
    let bad = corpus_dir().join("bad");
    let mut cases: Vec<(PathBuf, &str)> = vec![
        (
            bad.join("tab-indent.yaml"),
            "line 7 column 1: tab used for indentation",
        ),
        (
            bad.join("duplicate-key.yaml"),
            "line 8 column 5: duplicate key \"server\"",
        ),
        (bad.join("truncated.yaml"), "not valid YAML: line 14"),
        (
            bad.join("missing-user.yaml"),
            "users: no entry named \"alice\"",
        ),
    ];
    // Hostile input: 100,000 `[` once aborted the process on a stack overflow (the parser stops
    // flow nesting at 255 levels, the tree builder any nesting at 128), and a billion laughs
    // (each alias repeating the one before ten times) would fill memory.
    for (name, text, problem) in [
        (
            "deep-flow.yaml",
            format!("current-context: {}", "[".repeat(100_000)),
            "not valid YAML: line 1 column ",
        ),
        (
            "deep-block.yaml",
            format!("{}x\n", "- ".repeat(100_000)),
            "line 1 column 257: nested more than 128 levels deep",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        cases.push((path, problem));
    }
    let laughs = dir.join("laughs.yaml");
    let mut text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_string();
    for i in 1..10 {
        let p = i - 1;
        text += &format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        );
    }
    std::fs::write(&laughs, text).unwrap();
    cases.push((laughs, "aliases repeat more than"));
    for (path, problem) in cases {
        let (code, _, stderr) = run_binary(&[
            &format!("--kubeconfig={}", path.display()),
            &format!("--csi-address={}", dir.join("no.sock").display()),
        ]);
        let name = path.display().to_string();
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("kubeconfig {name}")) && stderr.contains(problem),
            "{name}: no mention of the file and {problem:?}:\n{stderr}"
        );
        for secret in ["panicked", "truncated-secret", "bob-secret-token", "lol"] {
            assert!(!stderr.contains(secret), "{name}: {secret:?} in\n{stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
