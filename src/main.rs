//! `csi-external-health-monitor-controller`: flags → validated config → run (or the one-shot
//! `--check-once`), and the one place the process exits (0 done, 1 fatal, 2 bad flags).
#![forbid(unsafe_code)]

use healthmon::{app, checkonce, flags, logging};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(String::as_str)
        .unwrap_or("csi-external-health-monitor-controller");
    let code = match flags::parse_with_warnings(args.get(1..).unwrap_or(&[])) {
        Ok((flags::Parsed::Help(_), _)) => {
            // Go's flag package prints -h usage to stderr and exits 0.
            eprint!("{}", flags::usage(argv0));
            0
        }
        Ok((flags::Parsed::Version, _)) => {
            println!("{argv0} {}", flags::VERSION);
            0
        }
        Ok((flags::Parsed::Run(config), warnings)) => {
            let log_config = config.log.clone();
            with_logging(&log_config, warnings, move || match app::run(config) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    log::logger().flush();
                    1
                }
            })
        }
        Ok((flags::Parsed::CheckOnce(config, output), warnings)) => {
            with_logging(&config.log, warnings, || checkonce::run(&config, output))
        }
        Err(flags::Error::Usage(message)) => {
            eprintln!("{message}");
            eprint!("{}", flags::usage(argv0));
            2
        }
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// Sets up logging, logs the flag warnings and runs `body` for its exit code (1 when logging
/// cannot be set up, as component-base exits).
fn with_logging(
    config: &healthmon::config::LogConfig,
    warnings: Vec<String>,
    body: impl FnOnce() -> i32,
) -> i32 {
    if let Err(e) = logging::init(config) {
        eprintln!("LoggingConfiguration is invalid: {e}");
        return 1;
    }
    for w in warnings {
        log::warn!("{w}");
    }
    body()
}
