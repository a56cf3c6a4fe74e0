//! Resumable, checksummed downloads of Hugging Face Hub models (hf://org/name@revision).
