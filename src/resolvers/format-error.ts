/**
 * Error masking: clients see PolyrayError codes and messages, GraphQL's own request errors, and nothing
 * else. Anything unexpected becomes INTERNAL_SERVER_ERROR and is logged here with its detail.
 */
import { GraphQLError, type GraphQLFormattedError } from 'graphql';
import { unwrapResolverError } from '@apollo/server/errors';
import { isPolyrayError } from '../errors.ts';
import type { Logger } from '../log.ts';

/** Codes Apollo Server itself assigns to request-level errors; their messages are safe to show. */
const APOLLO_SAFE_CODES = new Set([
  'GRAPHQL_PARSE_FAILED',
  'GRAPHQL_VALIDATION_FAILED',
  'BAD_USER_INPUT',
  'BAD_REQUEST',
  'PERSISTED_QUERY_NOT_FOUND',
  'PERSISTED_QUERY_NOT_SUPPORTED',
  'OPERATION_RESOLUTION_FAILURE',
]);

export function makeFormatError(logger: Logger) {
  return (formatted: GraphQLFormattedError, error: unknown): GraphQLFormattedError => {
    const unwrapped = unwrapResolverError(error);
    // Errors thrown outside resolvers (the context function: UNAUTHENTICATED) carry no path: unwrap those too.
    const original = unwrapped instanceof GraphQLError && isPolyrayError(unwrapped.originalError) ? unwrapped.originalError : unwrapped;
    if (isPolyrayError(original)) {
      return {
        message: original.message,
        ...(formatted.locations ? { locations: formatted.locations } : {}),
        ...(formatted.path ? { path: formatted.path } : {}),
        extensions: { ...original.extensions, code: original.code },
      };
    }
    const code = formatted.extensions?.['code'];
    if (typeof code === 'string' && APOLLO_SAFE_CODES.has(code)) {
      const { stacktrace: _drop, ...ext } = formatted.extensions ?? {};
      return { ...formatted, extensions: ext };
    }
    logger.error(
      { err: original instanceof Error ? { message: original.message, stack: original.stack } : String(original), path: formatted.path },
      'internal error',
    );
    return {
      message: 'Internal server error',
      ...(formatted.path ? { path: formatted.path } : {}),
      extensions: { code: 'INTERNAL_SERVER_ERROR' },
    };
  };
}
