//! The `pullthrough` daemon: parse the command line, load the config, run the server.

use std::path::Path;
use std::process::ExitCode;

use pingora::prelude::Opt;

fn main() -> ExitCode {
    if pullthrough::cli::is_command(std::env::args().nth(1).as_deref()) {
        return pullthrough::cli::run(std::env::args());
    }
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("healthcheck") {
        let url = args
            .next()
            .unwrap_or_else(|| pullthrough::healthcheck::DEFAULT_URL.to_owned());
        return match pullthrough::healthcheck::check(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pullthrough: {url}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    pullthrough::logging::init();
    let mut opt = Opt::parse_args();
    let Some(path) = opt.conf.take() else {
        eprintln!("pullthrough: no config file; run with -c FILE (see conf/pullthrough.yaml)");
        return ExitCode::from(2);
    };
    let config = match pullthrough::config::load(Path::new(&path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            return ExitCode::FAILURE;
        }
    };
    if opt.test {
        println!("pullthrough: {path} is valid");
        return ExitCode::SUCCESS;
    }
    match pullthrough::server::build(config, Some(opt)) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("pullthrough: {e}");
            ExitCode::FAILURE
        }
    }
}
