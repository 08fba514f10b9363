"""The spec: names, references and digests (Docker Hub's rules included), media types, the error hierarchy."""
