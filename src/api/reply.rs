//! One chat reply (a single choice) as typed events, for the wire APIs whose answers are lists of
//! content blocks (OpenAI's Responses, Anthropic's Messages): text as it comes, each tool call's
//! start (id, name) and its arguments in pieces, then how the reply ended. Tool calls are found by
//! the same `ToolCallStreamer` chat completions use. Whitespace before a call is not a text block:
//! it is held until real text follows.
use super::chat::ChatRun;
use super::errors::ApiError;
use super::generation::CancelGuard;
use super::pump::Piece;
use super::tools::{StreamPiece, ToolCallStreamer};
use std::collections::VecDeque;
use tokio::sync::mpsc::Receiver;

/// A piece of the reply: text, a call's start, or more of a call's arguments.
pub use super::tools::StreamPiece as ReplyEvent;

/// Why the reply ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// The model ended its turn (or its grammar was complete).
    Stop,
    /// `max_tokens` (or the request's deadline) was reached.
    Length,
    /// This stop string was generated (and is not part of the text).
    StopSequence(String),
    /// The reply made tool calls.
    ToolCalls,
}

/// What `ReplyStream::next` yields.
#[derive(Clone)]
pub enum Next {
    Event(StreamPiece),
    End {
        finish: Finish,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

/// The reply of a single-choice chat run, event by event.
pub struct ReplyStream {
    pieces: Receiver<Piece>,
    _guard: CancelGuard,
    streamer: Option<ToolCallStreamer>,
    queue: VecDeque<StreamPiece>,
    /// Whitespace-only text not yet emitted (dropped if a call follows).
    held: String,
    called: bool,
    end: Option<Next>,
}

impl ReplyStream {
    pub fn new(run: ChatRun) -> Self {
        Self {
            pieces: run.generation.pieces,
            _guard: run.generation.guard,
            streamer: run.tool_names.map(ToolCallStreamer::new),
            queue: VecDeque::new(),
            held: String::new(),
            called: false,
            end: None,
        }
    }

    fn absorb(&mut self, pieces: Vec<StreamPiece>) {
        for p in pieces {
            match p {
                StreamPiece::Content(t) if t.is_empty() => {}
                StreamPiece::Content(t) => {
                    if t.trim().is_empty() {
                        self.held.push_str(&t);
                    } else {
                        let text = std::mem::take(&mut self.held) + &t;
                        self.queue.push_back(StreamPiece::Content(text));
                    }
                }
                StreamPiece::CallStart { index, id, name } => {
                    self.held.clear();
                    self.called = true;
                    self.queue
                        .push_back(StreamPiece::CallStart { index, id, name });
                }
                StreamPiece::CallArgs { index, text } => {
                    self.queue.push_back(StreamPiece::CallArgs { index, text });
                }
            }
        }
    }

    /// The next event; after `End` or `Failed`, `End`/`Failed` again.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Next::Event(e);
            }
            if let Some(end) = &self.end {
                return end.clone();
            }
            match self.pieces.recv().await {
                Some(Piece::Delta { text, .. }) => {
                    let pieces = match self.streamer.as_mut() {
                        Some(st) => st.push(&text),
                        None => vec![StreamPiece::Content(text)],
                    };
                    self.absorb(pieces);
                }
                Some(Piece::End {
                    text,
                    reason,
                    completion_tokens,
                    stop_sequence,
                    ..
                }) => {
                    let pieces = match self.streamer.take() {
                        Some(mut st) => {
                            let mut pieces = st.push(&text);
                            let (rest, _) = st.finish();
                            pieces.extend(rest);
                            pieces
                        }
                        None => vec![StreamPiece::Content(text)],
                    };
                    self.absorb(pieces);
                    if !self.called && !self.held.is_empty() {
                        let text = std::mem::take(&mut self.held);
                        self.queue.push_back(StreamPiece::Content(text));
                    }
                    let finish = match (self.called, reason, stop_sequence) {
                        (true, _, _) => Finish::ToolCalls,
                        (false, _, Some(s)) => Finish::StopSequence(s),
                        (false, "length", None) => Finish::Length,
                        (false, _, None) => Finish::Stop,
                    };
                    self.end = Some(Next::End {
                        finish,
                        completion_tokens,
                    });
                }
                Some(Piece::Failed(e)) => self.end = Some(Next::Failed(e)),
                None => {
                    self.end = Some(Next::Failed(ApiError::internal(
                        "the generation ended without a result",
                    )))
                }
            }
        }
    }

    /// The whole reply: its items in order, how it ended and its length in tokens.
    pub async fn collect(mut self) -> Result<Reply, ApiError> {
        let mut items: Vec<ReplyItem> = Vec::new();
        loop {
            match self.next().await {
                Next::Event(StreamPiece::Content(t)) => match items.last_mut() {
                    Some(ReplyItem::Text(s)) => s.push_str(&t),
                    _ => items.push(ReplyItem::Text(t)),
                },
                Next::Event(StreamPiece::CallStart { id, name, .. }) => {
                    items.push(ReplyItem::Call {
                        id,
                        name,
                        arguments: String::new(),
                    })
                }
                Next::Event(StreamPiece::CallArgs { index, text }) => {
                    if let Some(ReplyItem::Call { arguments, .. }) = items
                        .iter_mut()
                        .filter(|i| matches!(i, ReplyItem::Call { .. }))
                        .nth(index)
                    {
                        arguments.push_str(&text);
                    }
                }
                Next::End {
                    finish,
                    completion_tokens,
                } => {
                    // As chat completions do: text beside calls loses its trailing whitespace.
                    if finish == Finish::ToolCalls {
                        for i in &mut items {
                            if let ReplyItem::Text(t) = i {
                                t.truncate(t.trim_end().len());
                            }
                        }
                        items.retain(|i| !matches!(i, ReplyItem::Text(t) if t.is_empty()));
                    }
                    return Ok(Reply {
                        items,
                        finish,
                        completion_tokens,
                    });
                }
                Next::Failed(e) => return Err(e),
            }
        }
    }
}

/// One item of a whole reply.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyItem {
    Text(String),
    Call {
        id: String,
        name: String,
        arguments: String,
    },
}

/// A whole reply.
pub struct Reply {
    pub items: Vec<ReplyItem>,
    pub finish: Finish,
    pub completion_tokens: usize,
}
