//! Prints the path of the statically linked fixture function binary, building it first when
//! needed (`cargo run -q -p bramble-testkit --example fixture-path`): for scripts that package
//! it as a function image, such as vm/test.

use std::process::ExitCode;

fn main() -> ExitCode {
    match bramble_testkit::fixture::fixture_binary() {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("building the fixture function: {e}");
            ExitCode::FAILURE
        }
    }
}
