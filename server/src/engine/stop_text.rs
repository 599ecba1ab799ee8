//! The text of an answer as it streams, cut at the first stop sequence: text that could still
//! turn out to be the start of a stop sequence is held back until it cannot.

/// An answer's text with its stop sequences.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    sent: usize,
}

impl StopText {
    /// Text that ends at the first of `stops` (empty strings are not allowed by the caller).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Adds `piece`; returns the text that can be sent now, and whether a stop sequence
    /// appeared (the text then ends before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.text.find(stop.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.text.truncate(at);
            return (self.take(self.text.len()), true);
        }
        let held = self.held_back();
        (self.take(self.text.len() - held), false)
    }

    /// The text not sent yet (the answer ended without a stop sequence).
    pub fn finish(&mut self) -> String {
        self.take(self.text.len())
    }

    /// The whole text so far (cut at a stop sequence once one appeared).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Bytes at the end of the text that begin some stop sequence.
    fn held_back(&self) -> usize {
        let mut held = 0;
        for stop in &self.stops {
            for (end, _) in stop.char_indices().skip(1) {
                if end > held && self.text.ends_with(&stop[..end]) {
                    held = end;
                }
            }
        }
        held
    }

    fn take(&mut self, end: usize) -> String {
        let end = end.max(self.sent);
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        piece
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_sent_at_once_without_stops() {
        let mut text = StopText::new(vec![]);
        assert_eq!(text.push("Hello"), ("Hello".to_string(), false));
        assert_eq!(text.push(" world"), (" world".to_string(), false));
        assert_eq!(text.finish(), "");
        assert_eq!(text.text(), "Hello world");
    }

    #[test]
    fn a_possible_stop_is_held_back_until_it_is_not_one() {
        let mut text = StopText::new(vec!["END".to_string()]);
        assert_eq!(text.push("abc E"), ("abc ".to_string(), false));
        assert_eq!(text.push("N"), (String::new(), false));
        assert_eq!(text.push("x"), ("ENx".to_string(), false));
        assert_eq!(text.finish(), "");
    }

    #[test]
    fn the_text_ends_before_the_first_stop_even_across_pieces() {
        let mut text = StopText::new(vec!["\n\n".to_string(), "STOP".to_string()]);
        assert_eq!(text.push("one\n"), ("one".to_string(), false));
        assert_eq!(text.push("\ntwo STOP"), (String::new(), true));
        assert_eq!(text.text(), "one");
    }

    #[test]
    fn multibyte_text_is_cut_at_character_boundaries() {
        let mut text = StopText::new(vec!["éé".to_string()]);
        assert_eq!(text.push("aé"), ("a".to_string(), false));
        assert_eq!(text.push("b"), ("éb".to_string(), false));
    }
}
