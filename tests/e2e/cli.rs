//! The command line as an operator meets it: version, help, bad flags and their exit codes.

use crate::support::run_binary;

#[test]
fn version_prints_argv0_and_version_and_exits_0() {
    let (code, out, _) = run_binary(&["--version"]);
    assert_eq!(code, 0);
    let bin = crate::support::bin();
    assert_eq!(
        out,
        format!("{} {}\n", bin.display(), healthmon::flags::VERSION),
        "{out}"
    );
}

#[test]
fn help_exits_0_with_usage_listing_flags() {
    for flag in ["-h", "--help", "-help"] {
        let (code, out, err) = run_binary(&[flag]);
        assert_eq!(code, 0, "{flag}");
        let text = format!("{out}{err}");
        for name in [
            "csi-address",
            "list-volumes-interval",
            "leader-election-lease-duration",
            "report-missing-volumes",
        ] {
            assert!(text.contains(name), "{flag}: usage lacks {name}:\n{text}");
        }
    }
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--timeout=15"], "timeout"),
        (&["--timeout", "abc"], "timeout"),
        (&["--list-volumes-interval=5"], "list-volumes-interval"),
        (&["--no-such-flag"], "no-such-flag"),
        (&["--worker-threads=-1"], "worker-threads"),
        (&["--logtostderr"], "logtostderr"),
        (&["--logging-format=xml"], "logging-format"),
        (&["--leader-election-labels=novalue"], "novalue"),
    ];
    for (args, name) in cases {
        let (code, _, err) = run_binary(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(name),
            "{args:?} error does not name {name}: {err}"
        );
    }
}

#[test]
fn invalid_combinations_exit_1() {
    let cases: &[(&[&str], &str)] = &[
        (&["--worker-threads=0"], "worker-threads"),
        (
            &["--http-endpoint=:8080", "--metrics-address=:8081"],
            "metrics-address",
        ),
        (
            &[
                "--leader-election",
                "--leader-election-lease-duration=5s",
                "--leader-election-renew-deadline=10s",
            ],
            "renew",
        ),
        (&["--csi-address=tcp://127.0.0.1:9000"], "unix"),
    ];
    for (args, needle) in cases {
        let (code, _, err) = run_binary(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.to_lowercase().contains(needle), "{args:?}: {err}");
    }
}
