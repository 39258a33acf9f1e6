"""Test doubles for pullboot: IMDSv2 fake, AWS Query fake, moto server wrapper, fault proxy.

Each fake listens on 127.0.0.1 with an ephemeral port only. Import the classes from their modules
(``tests.fakes.imds`` etc.); ``tests.fakes.fixtures`` is the pytest plugin exposing them.
"""
