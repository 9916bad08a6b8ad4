"""HTTP layer: parses requests and serialises views. No decisions are made here."""
