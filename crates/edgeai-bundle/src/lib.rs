//! Deterministic bundles (zip), their manifest and SBOM, minisign signatures and verification.
