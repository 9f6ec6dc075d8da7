//! A list command's flags, made from luna-domain's description of what the
//! server's list parses: every filter, `--sort`, `--skip`, `--limit`, with no
//! second copy to fall out of step.

use std::marker::PhantomData;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use luna_domain::query::{list_params, Filters, ParamKind};

#[derive(Debug, Clone)]
pub struct ListArgs<F> {
    /// (query name, value) for each flag given.
    pub query: Vec<(String, String)>,
    filters: PhantomData<F>,
}

fn flag(name: &str) -> String {
    name.replace('_', "-")
}

fn help(kind: &ParamKind) -> String {
    match kind {
        ParamKind::Text => "exact match".into(),
        ParamKind::Id => "a UUID".into(),
        ParamKind::WholeNumber { min, max } => format!("{min} to {max}"),
        ParamKind::Boolean => "true or false".into(),
        ParamKind::OneOf(values) => format!("one of: {}", values.join(", ")),
        ParamKind::SortFields(fields) => {
            format!("comma list, - for descending; fields: {}", fields.join(", "))
        }
    }
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
                    .value_name("VALUE")
                    .help(help(&param.kind)),
            )
        })
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}
