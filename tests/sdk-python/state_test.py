"""The official Dapr Python SDK (`dapr` on PyPI, gRPC) against a running statecar.

Run by tests/sdk_python.rs, which starts the sidecar with one store `statestore` and sets
DAPR_HTTP_PORT and DAPR_GRPC_PORT (the SDK waits on /v1.0/healthz/outbound over HTTP, then
speaks gRPC). Environment:
  STATECAR_APP_ID      the sidecar's app id
  STATECAR_STORE_TYPE  the component type of `statestore` (state.redis or state.in-memory)
  STATECAR_SUITE       `state` (default) or `auth` (the sidecar runs with DAPR_API_TOKEN)
"""

import os
import sys
import time
import unittest
import uuid

import grpc
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, Consistency, StateOptions

STORE = 'statestore'


def key(name):
    return f'{name}-{uuid.uuid4().hex[:8]}'


class StateOverGrpc(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = DaprClient()

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def assert_grpc_error(self, code, fn, *args, **kwargs):
        with self.assertRaises(DaprGrpcError) as ctx:
            fn(*args, **kwargs)
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        return ctx.exception

    def test_save_and_get_round_trip_bytes(self):
        k = key('bytes')
        value = b'\x00\xffnot json\n'
        self.client.save_state(STORE, k, value)
        got = self.client.get_state(STORE, k)
        self.assertEqual(got.data, value)
        self.assertTrue(got.etag.isdigit(), got.etag)

    def test_missing_key_is_empty(self):
        got = self.client.get_state(STORE, key('missing'))
        self.assertEqual(got.data, b'')
        self.assertEqual(got.etag, '')

    def test_etags_and_options(self):
        k = key('etag')
        self.client.save_state(STORE, k, 'v1')
        etag = self.client.get_state(STORE, k).etag
        first_write = StateOptions(
            concurrency=Concurrency.first_write, consistency=Consistency.strong
        )
        self.client.save_state(STORE, k, 'v2', etag=etag, options=first_write)
        got = self.client.get_state(STORE, k)
        self.assertEqual(got.data, b'v2')
        self.assertNotEqual(got.etag, etag)
        # The old etag is now stale: ABORTED, as daprd answers an etag mismatch.
        err = self.assert_grpc_error(
            grpc.StatusCode.ABORTED, self.client.save_state, STORE, k, 'v3', etag=etag,
            options=first_write,
        )
        self.assertIn('possible etag mismatch', err.details())
        self.assertEqual(self.client.get_state(STORE, k).data, b'v2')
        # First-write without an etag on an existing key is a conflict too.
        self.assert_grpc_error(
            grpc.StatusCode.ABORTED, self.client.save_state, STORE, k, 'v3',
            options=StateOptions(concurrency=Concurrency.first_write),
        )
        # An etag this store never issued is bad input.
        self.assert_grpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, self.client.save_state, STORE, k, 'v3',
            etag='not-a-version',
        )
        # Without first-write, a given etag must still match.
        self.client.save_state(STORE, k, 'v4', etag=got.etag)
        self.assertEqual(self.client.get_state(STORE, k).data, b'v4')

    def test_get_bulk_state_keeps_order(self):
        a, b, missing = key('a'), key('b'), key('none')
        self.client.save_state(STORE, a, '{"n":1}')
        self.client.save_state(STORE, b, 'two')
        items = self.client.get_bulk_state(STORE, keys=[b, missing, a], parallelism=2).items
        self.assertEqual([i.key for i in items], [b, missing, a])
        self.assertEqual(items[0].data, b'two')
        self.assertEqual(items[1].data, b'')
        self.assertEqual(items[1].etag, '')
        self.assertEqual(items[2].data, b'{"n":1}')
        self.assertTrue(all(i.error == '' for i in items))
        self.assertTrue(items[0].etag.isdigit())

    def test_delete_state_with_etag(self):
        k = key('del')
        self.client.save_state(STORE, k, 'x')
        etag = self.client.get_state(STORE, k).etag
        self.assert_grpc_error(
            grpc.StatusCode.ABORTED, self.client.delete_state, STORE, k,
            etag=str(int(etag) + 100),
        )
        self.assertEqual(self.client.get_state(STORE, k).data, b'x')
        self.client.delete_state(
            STORE, k, etag=etag, options=StateOptions(consistency=Consistency.strong)
        )
        self.assertEqual(self.client.get_state(STORE, k).data, b'')

    def test_transaction_is_all_or_nothing(self):
        keep, gone = key('tx-keep'), key('tx-gone')
        self.client.save_state(STORE, gone, 'old')
        self.client.execute_state_transaction(
            STORE,
            operations=[
                TransactionalStateOperation(
                    key=keep, data='new', operation_type=TransactionOperationType.upsert
                ),
                TransactionalStateOperation(
                    key=gone, data='', operation_type=TransactionOperationType.delete
                ),
            ],
        )
        self.assertEqual(self.client.get_state(STORE, keep).data, b'new')
        self.assertEqual(self.client.get_state(STORE, gone).data, b'')
        # A stale etag in the second operation: nothing of the transaction is applied.
        etag = self.client.get_state(STORE, keep).etag
        other = key('tx-other')
        self.assert_grpc_error(
            grpc.StatusCode.ABORTED,
            self.client.execute_state_transaction,
            STORE,
            operations=[
                TransactionalStateOperation(
                    key=other, data='1', operation_type=TransactionOperationType.upsert
                ),
                TransactionalStateOperation(
                    key=keep,
                    data='2',
                    etag=str(int(etag) + 1),
                    operation_type=TransactionOperationType.upsert,
                ),
            ],
        )
        self.assertEqual(self.client.get_state(STORE, other).data, b'')
        self.assertEqual(self.client.get_state(STORE, keep).data, b'new')

    def test_ttl_expires(self):
        k = key('ttl')
        self.client.save_state(STORE, k, 'brief', state_metadata={'ttlInSeconds': '1'})
        self.assertEqual(self.client.get_state(STORE, k).data, b'brief')
        deadline = time.time() + 5
        while time.time() < deadline and self.client.get_state(STORE, k).data:
            time.sleep(0.2)
        self.assertEqual(self.client.get_state(STORE, k).data, b'')

    def test_get_metadata(self):
        md = self.client.get_metadata()
        self.assertEqual(md.application_id, os.environ['STATECAR_APP_ID'])
        comps = {c.name: c for c in md.registered_components}
        self.assertIn(STORE, comps, md.registered_components)
        self.assertEqual(comps[STORE].type, os.environ['STATECAR_STORE_TYPE'])
        for cap in ('ETAG', 'TRANSACTIONAL', 'TTL'):
            self.assertIn(cap, comps[STORE].capabilities)
        self.assertIn('daprRuntimeVersion', md.extended_metadata)
        self.client.set_metadata('team', 'checkout')
        self.assertEqual(self.client.get_metadata().extended_metadata['team'], 'checkout')

    def test_unknown_store_and_illegal_key(self):
        err = self.assert_grpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, self.client.get_state, 'nostore', 'k'
        )
        self.assertEqual(err.details(), 'state store nostore is not found')
        self.assertEqual(err.error_code(), 'DAPR_STATE_NOT_FOUND')
        err = self.assert_grpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, self.client.save_state, STORE, 'a||b', 'v'
        )
        self.assertEqual(err.error_code(), 'DAPR_STATE_ILLEGAL_KEY')
        self.assertEqual(err.status_details().resource_info['resource_name'], STORE)

    def test_other_rpcs_are_unimplemented(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.client.publish_event('pubsub', 'orders', '{}')
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn('PublishEvent', ctx.exception.details())


class ApiToken(unittest.TestCase):
    """The sidecar runs with DAPR_API_TOKEN; the SDK sends it from the same variable."""

    def test_token_is_required(self):
        with DaprClient() as client:
            client.save_state(STORE, key('auth'), 'ok')
        token = os.environ['DAPR_API_TOKEN']
        try:
            os.environ['DAPR_API_TOKEN'] = 'wrong-' + token
            with DaprClient() as client:
                with self.assertRaises(DaprGrpcError) as ctx:
                    client.get_state(STORE, 'k')
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        finally:
            os.environ['DAPR_API_TOKEN'] = token


if __name__ == '__main__':
    suite = os.environ.get('STATECAR_SUITE', 'state')
    case = {'state': StateOverGrpc, 'auth': ApiToken}[suite]
    tests = unittest.defaultTestLoader.loadTestsFromTestCase(case)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(tests)
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
