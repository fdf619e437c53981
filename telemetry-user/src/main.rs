use clap::Parser;
use snakepit_agent::cli::{dispatch, error_line, init_logging, Cli};

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("snakepit-agent: {}", error_line(&e));
            std::process::exit(1);
        }
    }
}
