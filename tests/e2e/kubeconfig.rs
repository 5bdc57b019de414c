//! Kubeconfig credentials through the real binary (issue 3): HTTPS verified against a test CA
//! made with `openssl` at test time (and refused with the wrong CA), a `tokenFile` and an exec
//! credential plugin whose tokens rotate while the sidecar runs (the server starts answering 401
//! to the old token), and broken kubeconfigs: exit 1 with an error naming the file and field.
//! Parsing details are unit-tested in src/kube/config.rs; these prove the wiring.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::kit::apiserver::{FakeApiServer, Options, TlsFiles};
use crate::kit::csidriver::temp_dir;
use crate::kit::fixtures;
use crate::support::{run_binary, Env, Sidecar};

const WAIT: Duration = Duration::from_secs(30);
const FAST: &str = "--list-volumes-interval=300ms";

/// CA, a server certificate for 127.0.0.1 signed by it, and an unrelated second CA; EC keys
/// because they are generated in milliseconds.
fn make_pki(dir: &Path) {
    let script = r#"set -e
ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
ca='-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign'
openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca $ca
openssl req -x509 $ec -keyout other.key -out other-ca.crt -days 2 -subj /CN=other-ca $ca
openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext
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

#[test]
fn https_with_a_test_ca_and_bearer_token() {
    let pki = temp_dir("pki");
    make_pki(&pki);
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();
    let mut chain = read("server.crt");
    chain.extend(read("ca.crt"));
    let api = FakeApiServer::start_with(Options {
        tls: Some(TlsFiles {
            cert_pem: chain,
            key_pem: read("server.key"),
        }),
        token: Some("tls-token".into()),
        ..Options::default()
    })
    .expect("start https fake");
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
