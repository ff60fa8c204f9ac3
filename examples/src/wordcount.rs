//! `wordcount`: how many words a text has, and its most frequent ones. A word is a run of
//! letters, digits and inner apostrophes (`don't`), compared without case. The text is counted
//! a slice at a time, reporting progress after each and checking for a cancel request, so a
//! canceled job stops at the next slice.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use worker::schemars::{self, JsonSchema};
use worker::{JobContext, JobFailure, JobType};

/// Longest text a job may count, in characters.
pub const MAX_CHARS: u32 = 100_000;
/// Most frequent words a job may ask for.
pub const MAX_TOP: u8 = 50;
/// Words counted between two progress reports.
const SLICE_WORDS: usize = 2_000;

/// The input: the schema the facade checks submissions against is derived from this type,
/// bounds included (a `text` of 100 001 characters or `"top": 0` is refused with a 422 that
/// names the field, before anything is queued).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WordcountInput {
    /// The text to count, 1 to 100 000 characters.
    #[schemars(length(min = 1, max = MAX_CHARS))]
    pub text: String,
    /// How many of the most frequent words to return (1 to 50, default 10).
    #[schemars(range(min = 1, max = MAX_TOP))]
    pub top: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordcountOutput {
    /// Words in the text.
    pub words: u64,
    /// Different words (without case).
    pub distinct: u64,
    /// The most frequent words, most frequent first (alphabetical among equals).
    pub top: Vec<WordFrequency>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordFrequency {
    pub word: String,
    pub count: u64,
}

/// `wordcount`'s declaration: all the service needs to know about it.
pub fn job_type() -> JobType {
    JobType::new(
        "wordcount",
        "Counts the words of `text` and returns the `top` most frequent ones, with progress.",
        WordcountInput {
            text: "the quick brown fox jumps over the lazy dog".to_owned(),
            top: Some(3),
        },
        run,
    )
    .max_attempts(2)
    .max_run_seconds(60)
}

pub async fn run(input: WordcountInput, ctx: JobContext) -> Result<WordcountOutput, JobFailure> {
    let text = input.text.as_str();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0u64;
    for (i, word) in split_words(text).enumerate() {
        *counts.entry(word.to_lowercase()).or_default() += 1;
        words += 1;
        if (i + 1) % SLICE_WORDS == 0 {
            // Where this word ends in the text: how far the count has come.
            let done = word.as_ptr() as usize - text.as_ptr() as usize + word.len();
            ctx.progress(
                100.0 * done as f64 / text.len() as f64,
                format!("counted {words} words"),
            )
            .await;
            if ctx.is_cancelled() {
                // A client canceled the job: stop counting. The worker ends the job as
                // `canceled` itself, at this await point (an answer here would race that).
                return std::future::pending().await;
            }
        }
    }
    ctx.progress(100.0, format!("counted {words} words")).await;
    let distinct = counts.len() as u64;
    let mut frequencies: Vec<WordFrequency> = counts
        .into_iter()
        .map(|(word, count)| WordFrequency { word, count })
        .collect();
    frequencies.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    frequencies.truncate(usize::from(input.top.unwrap_or(10)));
    Ok(WordcountOutput {
        words,
        distinct,
        top: frequencies,
    })
}

/// The words of `text`: runs of letters and digits, with apostrophes inside a word kept.
fn split_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use worker::CancellationToken;

    fn ctx() -> JobContext {
        JobContext::detached_for("wordcount", CancellationToken::new())
    }

    #[tokio::test]
    async fn counts_words_without_case_and_ranks_them() {
        let input = WordcountInput {
            text: "The cat and the hat. THE END, don't 'quote' it's 42 42".to_owned(),
            top: Some(3),
        };
        let ctx = ctx();
        let out = run(input, ctx.clone()).await.unwrap();
        assert_eq!(out.words, 12);
        assert_eq!(out.distinct, 9);
        let top: Vec<(&str, u64)> = out.top.iter().map(|f| (f.word.as_str(), f.count)).collect();
        assert_eq!(top, [("the", 3), ("42", 2), ("and", 1)]);
        assert_eq!(ctx.latest_progress().unwrap().percent, 100.0);
    }

    #[tokio::test]
    async fn reports_progress_as_it_goes() {
        let text = "word ".repeat(SLICE_WORDS * 3);
        let ctx = ctx();
        let input = WordcountInput { text, top: None };
        let out = run(input, ctx.clone()).await.unwrap();
        assert_eq!(out.words, (SLICE_WORDS * 3) as u64);
        assert_eq!(
            out.top,
            [WordFrequency {
                word: "word".into(),
                count: out.words
            }]
        );
        assert_eq!(
            ctx.latest_progress().unwrap().message,
            format!("counted {} words", SLICE_WORDS * 3)
        );
    }

    #[tokio::test]
    async fn a_canceled_job_stops_counting() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let ctx = JobContext::detached_for("wordcount", cancel);
        let input = WordcountInput {
            text: "many words ".repeat(SLICE_WORDS * 10),
            top: None,
        };
        let stopped = tokio::time::timeout(Duration::from_secs(1), run(input, ctx.clone())).await;
        assert!(stopped.is_err(), "a canceled job must not produce a result");
        // It stopped at the first slice, not at the end of the text.
        let progress = ctx.latest_progress().unwrap();
        assert_eq!(progress.message, format!("counted {SLICE_WORDS} words"));
    }

    #[test]
    fn the_schema_carries_the_bounds() {
        let schema = worker::jobs::input_schema::<WordcountInput>();
        let properties = &schema["properties"];
        assert_eq!(properties["text"]["minLength"], 1);
        assert_eq!(properties["text"]["maxLength"], MAX_CHARS);
        assert_eq!(properties["top"]["minimum"], 1);
        assert_eq!(properties["top"]["maximum"], MAX_TOP);
        assert_eq!(schema["required"], serde_json::json!(["text"]));
        assert_eq!(schema["additionalProperties"], false);
    }
}
