//! "Did you mean" suggestions for misspelt keys, values and names.

/// Returns the candidate that `input` most likely misspells, if any.
///
/// Case is ignored throughout. A candidate qualifies when the edit distance between the two
/// (insertions, deletions, substitutions and swaps of neighbours) is at most a third of the
/// input's length, rounded down, so an input of one or two characters matches only by case. A
/// candidate that starts with an input of at least four characters qualifies too, as
/// `timeout_secs` does for `timeout`. The closest candidate wins, and the first one listed wins
/// a tie. An exact match is not a misspelling, so it is never returned.
pub(crate) fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let input_lower = input.to_ascii_lowercase();
    let input_chars = input.chars().count();
    let max_distance = input_chars / 3;

    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == input {
            continue;
        }
        let candidate_lower = candidate.to_ascii_lowercase();
        let prefix = input_chars >= 4 && candidate_lower.starts_with(&input_lower);
        // The distance is at least the difference in length; skipping early keeps a long input
        // from costing its length times every candidate's.
        let length_gap = input_chars.abs_diff(candidate.chars().count());
        if !prefix && length_gap > max_distance {
            continue;
        }
        let distance = edit_distance(&input_lower, &candidate_lower);
        let better = best.is_none_or(|(best_distance, _)| distance < best_distance);
        if (prefix || distance <= max_distance) && better {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Returns the edit distance between `a` and `b` in characters, counting a swap of two
/// neighbouring characters as one edit (the optimal string alignment distance).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Row i contains the distances between the first i characters of `a` and each prefix of `b`.
    // A swap looks two rows back, so three rows are kept.
    let mut before_previous: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut distance = (previous[j - 1] + cost)
                .min(previous[j] + 1)
                .min(current[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                distance = distance.min(before_previous[j - 2] + 1);
            }
            current[j] = distance;
        }
        std::mem::swap(&mut before_previous, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("section_elemnt", "section_element"), 1);
        assert_eq!(edit_distance("é", "e"), 1);
        assert_eq!(edit_distance("lable", "label"), 1);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("abc", "ca"), 3);
    }

    #[test]
    fn closest_finds_misspelling() {
        let keys = ["section", "section_element", "section_element_type"];
        assert_eq!(closest("section_elemnt", keys), Some("section_element"));
        assert_eq!(closest("sectoin", keys), Some("section"));
        assert_eq!(closest("lable", ["label", "value"]), Some("label"));
        assert_eq!(
            closest("timeout", ["command", "timeout_secs"]),
            Some("timeout_secs")
        );
        assert_eq!(closest("Section", keys), Some("section"));
        assert_eq!(
            closest("TICKET_TOKN", ["TICKET_TOKEN", "API_KEY"]),
            Some("TICKET_TOKEN")
        );
    }

    #[test]
    fn closest_ignores_distant_and_exact() {
        let keys = ["name", "label", "ui_element"];
        assert_eq!(closest("widget", keys), None);
        assert_eq!(closest("name", keys), None);
        assert_eq!(closest("c", ["a", "b"]), None);
        assert_eq!(closest("B_", ["A", "B"]), None);
        assert_eq!(closest("b", ["a", "B"]), Some("B"));
        assert_eq!(closest("anything", []), None);
        // Prefixes count from four characters.
        assert_eq!(closest("sec", ["section"]), None);
        let long = "x".repeat(100_000);
        assert_eq!(closest(&long, keys), None);
    }

    #[test]
    fn closest_prefers_nearest_then_first() {
        assert_eq!(closest("abcd", ["abxy", "abcx"]), Some("abcx"));
        assert_eq!(closest("abc", ["abd", "abe"]), Some("abd"));
    }
}
