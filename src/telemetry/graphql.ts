/**
 * Names the request's server span after its GraphQL operation (`query PostsWithEmbeddings`) and records
 * the operation's type and name and the error codes it answered with, as OpenTelemetry's GraphQL
 * conventions do. Added only while tracing is on.
 */
import type { ApolloServerPlugin } from '@apollo/server';
import { trace, context, SpanStatusCode } from '@opentelemetry/api';

export function graphqlTracingPlugin<C extends object>(): ApolloServerPlugin<C> {
  return {
    async requestDidStart() {
      const span = trace.getSpan(context.active());
      if (!span) return;
      return {
        async didResolveOperation({ operation, operationName }) {
          const type = operation?.operation ?? 'query';
          span.updateName(operationName ? `${type} ${operationName}` : type);
          span.setAttribute('graphql.operation.type', type);
          if (operationName) span.setAttribute('graphql.operation.name', operationName);
        },
        async didEncounterErrors({ errors }) {
          const codes = [...new Set(errors.map((e) => String(e.extensions?.['code'] ?? 'INTERNAL_SERVER_ERROR')))];
          span.setAttribute('polyray.error.codes', codes);
          span.setStatus({ code: SpanStatusCode.ERROR, message: codes.join(',') });
        },
      };
    },
  };
}
