//! `csi-external-health-monitor-controller`: the one place the process exits (0 done, 1 fatal,
//! 2 bad flags); `app::main` does the rest (flags → validated config → run, or the one-shot
//! `--check-once`). A panic on any thread exits from `crash` instead.
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(healthmon::app::main(&args));
}
