"""Certificates: issuing the CA and serving certificate, and reading what an endpoint serves."""
