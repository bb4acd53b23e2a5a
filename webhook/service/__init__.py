"""The admission service: AdmissionReview handling, the HTTP app, the server process, TLS."""
