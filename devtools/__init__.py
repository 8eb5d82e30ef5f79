"""Tools for running, testing and packaging the service on a developer machine or in CI.

Not part of the images' runtime: ``serve_app`` never imports this package.
"""
