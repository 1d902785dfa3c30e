//! Constrained decoding's grammar side: what a request may constrain its output to (`GrammarSpec`: a
//! JSON schema, any JSON object, a regex, a list of choices, a Lark grammar), compiled by llguidance
//! over the model's vocabulary into a `Matcher` that says, token by token, what may come next.
//! Compiled grammars are cached per model, so a schema seen before costs nothing to compile again.
//! The engine (`engine::constraint`) applies matchers while sampling; the API only builds specs.
mod compiler;
mod spec;
mod vocab;

pub use compiler::{GrammarCompiler, GrammarError};
pub use llguidance::Matcher;
pub use spec::{with_json_options, GrammarSpec};
pub use toktrie::SimpleVob as TokenMask;
pub use vocab::VocabEnv;
