//! Manifest parsing and validation, from TOML and from JSON.
//!
//! The first byte of an input chooses the format (even: TOML, odd: JSON), the rest is the
//! manifest text. Parsing must return without panicking, and a manifest that validates must
//! survive the round trip the documentation promises: serialised to TOML or JSON, it parses back
//! to an equal manifest.

#![no_main]

use agentrun::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&format, text)) = data.split_first() else {
        return;
    };

    let parsed = if format % 2 == 0 {
        let Ok(text) = std::str::from_utf8(text) else {
            return;
        };
        Manifest::from_toml_str(text)
    } else {
        let parsed = Manifest::from_json_slice(text);
        // The `Deserialize` implementation runs the same validation.
        let embedded = serde_json::from_slice::<Manifest>(text);
        assert_eq!(
            parsed.is_ok(),
            embedded.is_ok(),
            "{parsed:?} vs {embedded:?}"
        );
        if let (Ok(parsed), Ok(embedded)) = (&parsed, &embedded) {
            assert_eq!(parsed, embedded);
        }
        parsed
    };

    let manifest = match parsed {
        Ok(manifest) => manifest,
        Err(error) => {
            // Formatting the error walks every problem; it must not panic either.
            assert!(!error.to_string().is_empty());
            return;
        }
    };

    let toml_text = toml::to_string(&manifest).expect("a valid manifest serialises to TOML");
    let from_toml = Manifest::from_toml_str(&toml_text)
        .unwrap_or_else(|error| panic!("TOML round trip failed: {error}\n{toml_text}"));
    assert_eq!(from_toml, manifest, "TOML round trip:\n{toml_text}");

    let json = serde_json::to_vec(&manifest).expect("a valid manifest serialises to JSON");
    let from_json = Manifest::from_json_slice(&json).unwrap_or_else(|error| {
        panic!(
            "JSON round trip failed: {error}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(from_json, manifest, "JSON round trip");
});
