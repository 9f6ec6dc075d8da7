//! A list command's flags, made from luna-domain's description of what the
//! server's list parses: every filter, `--sort`, `--skip`, `--limit`, with no
//! second copy to fall out of step.

use std::marker::PhantomData;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use luna_domain::query::{list_params, Filters};

#[derive(Debug, Clone)]
pub struct ListArgs<F> {
    /// (query name, value) for each flag given.
    pub query: Vec<(String, String)>,
    filters: PhantomData<F>,
}

fn flag(name: &str) -> String {
    name.replace('_', "-")
}

impl<F: Filters> FromArgMatches for ListArgs<F> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let query = list_params::<F>()
            .into_iter()
            .filter_map(|param| {
                matches
                    .get_one::<String>(param.name)
                    .map(|value| (param.name.to_owned(), value.clone()))
            })
            .collect();
        Ok(ListArgs {
            query,
            filters: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<F: Filters> Args for ListArgs<F> {
    fn augment_args(command: Command) -> Command {
        list_params::<F>().into_iter().fold(command, |command, param| {
            command.arg(
                Arg::new(param.name)
                    .long(flag(param.name))
                    .help_heading("List")
                    // `--sort -updatedAt` is a value, not a flag.
                    .allow_hyphen_values(true)
                    .value_name("VALUE")
                    .help(param.kind.describe()),
            )
        })
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}
